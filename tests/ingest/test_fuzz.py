"""Damaged copies of real captures never break the readers (hypothesis).

Each example takes a seed capture (``conftest.py``), applies a few mutations - flipped
bytes, a cut, inserted or deleted runs, length and header fields overwritten with
extreme values - and reads the result. The reader must either raise
:class:`CaptureError` (one line naming the input) or return rows that keep every rule of
the packet schema (``netsift.schema``, docs/schema.md), with counted skips only. The same
bytes read through a stream that returns short reads, in small batches, must give the
same rows and the same skips: where a chunk boundary falls changes nothing.

Examples are derandomised (the same mutations on every run, applied to that run's
seeds) and few; a watchdog turns a reader that never returns into a failure with a
traceback instead of a hung run.
"""

from __future__ import annotations

import faulthandler
import gzip
import io
import struct

import numpy as np
import pyarrow as pa
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netsift import CaptureError, CaptureReader
from netsift.ingest import skips
from netsift.ingest.pcap import MAX_CAPLEN
from netsift.ingest.pcapng import MAX_BLOCK, MAX_INTERFACES
from netsift.schema import PACKET_COLUMNS, address_from_text

NAME = "fuzzed-capture"
SEED_NAMES = ("pcap", "pcapng", "nsec_pcap")
# A reader stuck longer than this on a file of a few hundred KiB is hung.
WATCHDOG_S = 120
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

EXTREMES = (0, 1, 3, 4, 8, 11, 12, 13, 15, 16, 20, 28, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF,
            0x10000, MAX_CAPLEN - 1, MAX_CAPLEN, MAX_CAPLEN + 1, MAX_BLOCK, MAX_BLOCK + 4,
            0x7FFFFFFF, 0x80000000, 0xFFFFFFFC, 0xFFFFFFFF)
V4_PREFIX = np.frombuffer(address_from_text("0.0.0.0")[:12], dtype=np.uint8)
L3 = ("src", "dst", "ip_version", "proto", "ttl", "ip_len", "frag_offset", "more_fragments")
NEVER_NULL = ("wire_len", "cap_len", "interface", "source", "record")
MESSAGES = set(skips.MESSAGES.values())


class Seed:
    """A seed capture's bytes and the offsets of its header and length fields."""

    def __init__(self, name: str, data: bytes, fields: tuple[int, ...]):
        self.name, self.data, self.fields = name, data, fields

    def __repr__(self) -> str:  # failing examples print their arguments
        return f"Seed({self.name!r}, {len(self.data)} bytes)"


def pcap_fields(data: bytes) -> list[int]:
    fields, pos = [4, 6, 8, 12, 16, 20], 24
    while pos + 16 <= len(data):
        frame = pos + 16
        # Record header, then Ethernet type, IP version/IHL, lengths, flags, protocol.
        fields += [pos, pos + 4, pos + 8, pos + 12, frame + 12, frame + 14, frame + 16,
                   frame + 18, frame + 20, frame + 23, frame + 34, frame + 54]
        pos = frame + struct.unpack_from("<I", data, pos + 8)[0]
    return fields


def pcapng_fields(data: bytes) -> list[int]:
    fields, pos = [], 0
    while pos + 12 <= len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        fields += [pos, pos + 4, pos + 8, pos + blen - 4]
        if btype == 0x0A0D0D0A:
            fields += [pos + 12, pos + 16]
        elif btype == 1:
            fields += [pos + 12]
        elif btype == 6:
            frame = pos + 28
            fields += [pos + 12, pos + 16, pos + 20, pos + 24, frame + 12, frame + 14,
                       frame + 16, frame + 20, frame + 23]
        pos += blen
    return [f for f in fields if f < len(data)]


@pytest.fixture(scope="module")
def seed_files(seeds) -> dict[str, Seed]:
    found = {}
    for name in SEED_NAMES:
        data = getattr(seeds, name).read_bytes()
        fields = pcapng_fields(data) if name == "pcapng" else pcap_fields(data)
        found[name] = Seed(name, data, tuple(fields))
    return found


# -- mutations ---------------------------------------------------------------------

# Positions are drawn large and taken modulo the current length, so one mutation list
# applies to any input; each tuple starts with the operation's name.
POSITION = st.integers(0, 1 << 30)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), POSITION, st.integers(1, 255)),
    st.tuples(st.just("cut"), POSITION),
    st.tuples(st.just("insert"), POSITION, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), POSITION, st.integers(1, 64)),
    # Overwrite with an extreme value: at a header or length field when the flag is set.
    st.tuples(st.just("field"), POSITION, st.booleans(), st.sampled_from((1, 2, 4)),
              st.sampled_from(EXTREMES), st.sampled_from(("little", "big"))),
)
MUTATIONS = st.lists(MUTATION, min_size=1, max_size=4)


def mutate(data: bytes, mutations: list[tuple], fields: tuple[int, ...]) -> bytes:
    out = bytearray(data)
    for op, position, *args in mutations:
        if not out:
            break
        at = position % len(out)
        if op == "flip":
            out[at] ^= args[0]
        elif op == "cut":
            del out[at:]
        elif op == "insert":
            out[at:at] = args[0]
        elif op == "delete":
            del out[at:at + args[0]]
        else:
            on_field, width, value, order = args
            if on_field and fields:
                at = fields[position % len(fields)]
            out[at:at + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, order)
    return bytes(out)


# -- reading -------------------------------------------------------------------------

class Trickle(io.RawIOBase):
    """Hands out at most ``step`` bytes per read, like a pipe."""

    def __init__(self, data: bytes, step: int):
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._step, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def read(stream, batch_rows: int):
    """(table, stats) or the CaptureError message; any other exception propagates."""
    capture = CaptureReader(stream, name=NAME, batch_rows=batch_rows)
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    try:
        batches = list(capture)
    except CaptureError as exc:
        message = str(exc)
        assert "\n" not in message
        assert NAME in message
        return message
    finally:
        faulthandler.cancel_dump_traceback_later()
    for batch in batches:
        assert 0 < batch.num_rows <= batch_rows
    schema = batches[0].schema if batches else None
    table = pa.Table.from_batches(batches, schema=schema) if batches else None
    return table, capture.stats


def read_both_ways(data: bytes, step: int, batch_rows: int):
    whole = read(io.BytesIO(data), batch_rows=1 << 18)
    trickled = read(Trickle(data, step), batch_rows=batch_rows)
    if isinstance(whole, str):
        assert trickled == whole
        return None
    assert not isinstance(trickled, str), trickled
    (table, stats), (table2, stats2) = whole, trickled
    assert stats2.skipped == stats.skipped
    assert stats2.bytes_read == stats.bytes_read
    if table is None:
        assert table2 is None
    else:
        assert table2.to_pylist() == table.to_pylist()
    return table, stats


# -- invariants ----------------------------------------------------------------------

def valid(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).is_valid())


def values(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).fill_null(0).to_numpy()


def addresses(table: pa.Table, name: str) -> np.ndarray:
    """An address column as an (n, 16) byte matrix; null rows hold whatever is there."""
    array = table.column(name).combine_chunks()
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8).reshape(-1, 16)
    return data[array.offset:array.offset + len(array)]


def check_rows(table: pa.Table | None, stats, input_bytes: int) -> None:
    """Every rule of the packet schema, for rows read from ``input_bytes`` bytes.

    Damage can turn a seed into another format (a ``{`` at the start makes JSON), so
    the container rules follow the format the reader found.
    """
    assert all(count > 0 for count in stats.skipped.values())
    assert set(stats.skipped) <= MESSAGES
    assert stats.counters[skips.BYTES_SKIPPED] <= input_bytes
    assert stats.bytes_read == input_bytes
    n = 0 if table is None else table.num_rows
    assert stats.packets == n
    # The smallest record is a 16-byte header (pcap) or Simple Packet Block (pcapng).
    assert n <= input_bytes // 16
    if table is None:
        return
    assert table.column_names == list(PACKET_COLUMNS)
    for name in NEVER_NULL:
        assert table.column(name).null_count == 0, name
    assert set(table.column("source").unique().to_pylist()) == {NAME}
    record = values(table, "record")
    assert record[0] >= 1 and (np.diff(record) > 0).all()
    assert (values(table, "ts") >= 0).all()
    if stats.format in ("pcap", "pcapng"):
        assert record[-1] <= input_bytes // 16
        assert (values(table, "cap_len") <= min(MAX_CAPLEN, input_bytes)).all()
        interface = values(table, "interface")
        assert (interface < (MAX_INTERFACES if stats.format == "pcapng" else 1)).all()
    if stats.format != "pcapng":
        # Only pcapng Simple Packet Blocks lack a timestamp.
        assert table.column("ts").null_count == 0

    l3 = valid(table, "src")
    for name in L3:
        assert (valid(table, name) == l3).all(), name
    version = values(table, "ip_version")
    proto = values(table, "proto")
    frag = values(table, "frag_offset")
    ethertype = values(table, "ethertype")
    v4, v6 = l3 & (version == 4), l3 & (version == 6)
    assert (v4 | v6 == l3).all()
    assert (valid(table, "ethertype")[l3]).all()
    assert (ethertype[v4] == 0x0800).all() and (ethertype[v6] == 0x86DD).all()
    for name in ("src", "dst"):
        assert (addresses(table, name)[v4, :12] == V4_PREFIX).all(), name
    assert (values(table, "ip_len")[v6] >= 40).all()
    assert (frag[l3] % 8 == 0).all()
    first = l3 & (frag == 0)

    ports = valid(table, "sport")
    assert (valid(table, "dport") == ports).all()
    assert not (ports & ~(first & np.isin(proto, (6, 17)))).any()
    tcp = valid(table, "tcp_flags")
    assert (valid(table, "tcp_window") == tcp).all()
    assert not (tcp & ~(ports & (proto == 6))).any()
    assert (values(table, "tcp_flags") <= 0xFFF).all()
    icmp = valid(table, "icmp_type")
    assert (valid(table, "icmp_code") == icmp).all()
    assert not (icmp & ~(first & np.isin(proto, (1, 58)))).any()
    assert not (valid(table, "vlan_inner") & ~valid(table, "vlan")).any()


# -- the tests ---------------------------------------------------------------------

def check_example(data: bytes, step: int, batch_rows: int) -> None:
    result = read_both_ways(data, step, batch_rows)
    if result is not None:
        table, stats = result
        check_rows(table, stats, input_bytes=len(data))


def test_seeds_keep_the_invariants(seed_files):
    # The checks above hold for the undamaged captures and are not vacuous there.
    for seed in seed_files.values():
        table, stats = read_both_ways(seed.data, 4093, 5)
        assert stats.skipped == {} and table.num_rows > 40
        check_rows(table, stats, len(seed.data))
        for column in ("sport", "tcp_flags", "icmp_type"):
            assert table.column(column).null_count < table.num_rows


@FUZZ
@given(name=st.sampled_from(SEED_NAMES), mutations=MUTATIONS,
       step=st.sampled_from((509, 4093, 65521)), batch_rows=st.sampled_from((1, 7, 64, 1 << 18)))
def test_mutated_captures(seed_files, name, mutations, step, batch_rows):
    seed = seed_files[name]
    mutated = mutate(seed.data, mutations, seed.fields)
    check_example(mutated, step, batch_rows)


def compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
@settings(FUZZ, max_examples=40)
@given(name=st.sampled_from(SEED_NAMES), mutations=MUTATIONS)
def test_mutated_compressed_captures(seed_files, kind, name, mutations):
    mutated = mutate(compress(kind, seed_files[name].data), mutations, ())
    result = read_both_ways(mutated, 4093, 1 << 18)
    if result is not None:
        table, stats = result
        # Decompressed bytes: the rules hold for what the reader was given.
        check_rows(table, stats, input_bytes=stats.bytes_read)
