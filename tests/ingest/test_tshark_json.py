"""tshark ``-T json`` / ``-T ek`` archives read into the rows of the captures they came from.

Every capture here is made by real tools (``netlab``, the loopback seeds, a VXLAN tunnel
below, the bundled LAN sample); tshark 4.0 exports it, and the archive's rows must equal
what the capture reader yields for the capture itself, column by column, with ``source``
the archive's path. tshark runs with IP reassembly off (each frame stands alone); what
the default does is pinned by its own test.

One narrow exception, where the archive does not hold the value: an IPv6 extension
header that the snap length cut is dropped whole by tshark, so ``proto`` keeps the last
next-header tshark showed, while the decoder reads the cut header's next-header byte.
"""

from __future__ import annotations

import faulthandler
import gzip
import io
import json
import random
import re
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import netlab
import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsift import CaptureError, CaptureReader, address_from_text, read_table
from netsift.ingest import skips, tshark_json

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "lan.pcap.gz"
EACH_FRAME_ALONE = ("-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE")
FORMATS = ("json", "ek")
# Captures covering every link type and tag layout the decoder reads, cut frames,
# fragments, jumbograms, ICMP errors and pcapng interfaces (netlab.make_captures).
LAB_CAPTURES = ("ethernet.pcap", "snap40.pcap", "sll.pcap", "sll2.pcap", "sll2_snap62.pcap",
                "raw4.pcap", "raw6.pcap", "null.pcap", "loop.pcap", "vlan.pcap",
                "multi.pcapng")
IPV6_EXTENSION_HEADERS = {0, 43, 44, 51, 60, 135, 139, 140}
# The exception's only occurrence: IPv6 jumbograms (BIG TCP) whose Hop-by-Hop header
# the 62-byte snap length cut.
EXCUSE = {"sll2_snap62.pcap": lambda row: row["ip_version"] == 6 and row["wire_len"] > 65535}
TRANSPORT = ("sport", "dport", "tcp_flags", "tcp_window", "icmp_type", "icmp_code")

MALFORMED = skips.MESSAGES[skips.MALFORMED_JSON]
MISSING = skips.MESSAGES[skips.MISSING_FIELD]
TRUNCATED = skips.MESSAGES[skips.TRUNCATED_RECORD]
COMPRESSION = skips.MESSAGES[skips.CORRUPT_COMPRESSION]
SKIPPED_BYTES = skips.MESSAGES[skips.BYTES_SKIPPED]
BAD_LENGTH = skips.MESSAGES[skips.BAD_RECORD_LENGTH]
BAD_TIME = skips.MESSAGES[skips.BAD_TIMESTAMP]


@pytest.fixture(autouse=True)
def no_hang():
    """A reader that loops forever fails the run loudly instead of stalling it."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """export(capture, fmt, *options) -> path of tshark's export (made once per module)."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    out = tmp_path_factory.mktemp("exports")
    made: dict[tuple, Path] = {}

    def run(capture: Path, fmt: str, *options: str) -> Path:
        key = (capture, fmt, options)
        if key not in made:
            path = out / f"{len(made)}-{Path(capture).name}.{fmt}"
            with open(path, "wb") as sink:
                subprocess.run(["tshark", "-n", "-r", str(capture), "-T", fmt, *options],
                               stdout=sink, stderr=subprocess.DEVNULL, check=True, timeout=120)
            made[key] = path
        return made[key]
    return run


def read(path, **kwargs) -> tuple[pa.Table, CaptureReader]:
    reader = CaptureReader(path, **kwargs)
    batches = list(reader)
    table = pa.Table.from_batches(batches) if batches else read_table(path)
    assert reader.stats.packets == table.num_rows
    return table, reader


def rows(table: pa.Table) -> list[dict]:
    return table.drop_columns(["source"]).to_pylist()


def assert_same_rows(archive: Path, capture: Path, fmt: str, *, excuse=None
                     ) -> tuple[list[dict], int]:
    """The archive's rows equal the capture's, but for rows ``excuse(row)`` selects that
    differ by the documented exception only; (rows, number excused)."""
    table, reader = read(archive)
    assert reader.stats.format == f"tshark-{fmt}"
    assert reader.stats.skipped == {}
    assert set(table.column("source").to_pylist()) == {str(archive)}
    expected, got = rows(read_table(capture)), rows(table)
    assert len(got) == len(expected) > 0
    excused = 0
    for want, have in zip(expected, got, strict=True):
        if want != have and excuse and excuse(want) and _cut_extension_header(want, have):
            excused += 1
            have = dict(have, proto=want["proto"])
        assert have == want, f"record {want['record']}"
    return got, excused


def _cut_extension_header(want: dict, have: dict) -> bool:
    return (have["ip_version"] == 6 and have["cap_len"] < have["wire_len"]
            and have["proto"] in IPV6_EXTENSION_HEADERS and have["proto"] != want["proto"]
            and dict(have, proto=None) == dict(want, proto=None))


# -- the same rows as the capture reader -------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", LAB_CAPTURES)
def test_lab_archive_rows_equal_capture_rows(name, fmt, captures, export):
    capture = captures[name].path
    excuse = EXCUSE.get(name)
    _, excused = assert_same_rows(export(capture, fmt, *EACH_FRAME_ALONE), capture, fmt,
                                  excuse=excuse)
    assert (excused > 0) == (excuse is not None)


@pytest.mark.root
@pytest.mark.parametrize("fmt", FORMATS)
def test_loopback_archive_rows_equal_capture_rows(fmt, seeds, export):
    """curl to http.server, ping, ping -6 and dig to a closed port, recorded on lo."""
    got, _ = assert_same_rows(export(seeds.pcap, fmt, *EACH_FRAME_ALONE), seeds.pcap, fmt)
    assert {r["icmp_type"] for r in got} >= {3, 1}  # the port unreachable errors


@pytest.mark.parametrize("fmt", FORMATS)
def test_lan_sample_archive_rows_equal_capture_rows(fmt, export):
    assert_same_rows(export(SAMPLE, fmt, *EACH_FRAME_ALONE), SAMPLE, fmt)


@pytest.mark.parametrize("fmt,compressor,suffix", [("json", "zstd", "zst"), ("ek", "gzip", "gz"),
                                                   ("json", "gzip", "gz"), ("ek", "zstd", "zst")])
def test_compressed_archive(fmt, compressor, suffix, export, tmp_path):
    plain = export(SAMPLE, fmt, *EACH_FRAME_ALONE)
    archive = tmp_path / f"lan.{fmt}.{suffix}"
    with open(plain, "rb") as source, open(archive, "wb") as sink:
        subprocess.run([compressor, "-c", "-q"] if compressor == "zstd" else [compressor, "-c"],
                       stdin=source, stdout=sink, check=True, timeout=60)
    got, _ = assert_same_rows(archive, SAMPLE, fmt)
    reader = CaptureReader(archive)
    assert sum(b.num_rows for b in reader) == len(got)
    assert reader.stats.compression == {"zst": "zstd", "gz": "gzip"}[suffix]


# -- repeated layers: the first is the outer header ----------------------------------------

class TunnelLab(netlab.Lab):
    """Two namespaces on a veth pair, with VXLAN tunnels over IPv4 (vx4) and IPv6 (vx6)."""

    OUTER_V4 = ("10.88.0.1", "10.88.0.2")
    OUTER_V6 = ("fd88::1", "fd88::2")
    INNER4 = ("10.89.4.1", "10.89.4.2")
    INNER6 = ("10.89.6.1", "10.89.6.2")
    INNER6_V6 = ("fd89:6::1", "fd89:6::2")

    def build(self) -> None:
        for ns in (self.client, self.server):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True,
                           timeout=10)
            self._namespaces.append(ns)
        subprocess.run(["ip", "link", "add", "va", "netns", self.client, "type", "veth",
                        "peer", "name", "va", "netns", self.server], check=True,
                       capture_output=True, timeout=10)
        for side, ns in enumerate((self.client, self.server)):
            peer = 1 - side
            steps = [
                ["link", "set", "lo", "up"],
                ["addr", "add", self.OUTER_V4[side] + "/24", "dev", "va"],
                ["addr", "add", self.OUTER_V6[side] + "/64", "dev", "va", "nodad"],
                ["link", "set", "va", "up"],
                ["link", "add", "vx4", "type", "vxlan", "id", "4", "dstport", "4789",
                 "local", self.OUTER_V4[side], "remote", self.OUTER_V4[peer]],
                ["link", "add", "vx6", "type", "vxlan", "id", "6", "dstport", "4789",
                 "local", self.OUTER_V6[side], "remote", self.OUTER_V6[peer]],
                ["addr", "add", self.INNER4[side] + "/24", "dev", "vx4"],
                ["addr", "add", self.INNER6[side] + "/24", "dev", "vx6"],
                ["addr", "add", self.INNER6_V6[side] + "/64", "dev", "vx6", "nodad"],
                ["link", "set", "vx4", "up"],
                ["link", "set", "vx6", "up"],
            ]
            for step in steps:
                self.run(ns, "ip", *step)


@pytest.fixture(scope="module")
def tunnel_capture(tmp_path_factory) -> Path:
    """Ethernet capture of the veth carrying VXLAN: outer IPv4 or IPv6 and UDP around an
    inner Ethernet frame with ping, a refused TCP connection and an ICMP port
    unreachable that quotes the inner UDP datagram."""
    reason = netlab.unavailable_reason()
    if reason:
        pytest.skip(f"tunnel capture unavailable: {reason}")
    out = tmp_path_factory.mktemp("tunnel")
    path = out / "vxlan.pcap"
    with TunnelLab() as lab:
        try:
            lab.build()
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"no VXLAN here: {exc}")
        c = lab.client
        tcpdump = lab.record(c, ["tcpdump", "-n", "-U", "--immediate-mode", "-i", "va", "-w",
                                 str(path)],
                             out / "tcpdump.log")
        for argv in (["ping", "-c", "2", "-i", "0.2", "-W", "1", TunnelLab.INNER4[1]],
                     ["ping", "-c", "1", "-W", "1", TunnelLab.INNER6[1]],
                     ["ping", "-6", "-c", "1", "-W", "1", TunnelLab.INNER6_V6[1]],
                     ["dig", "+tries=1", "+time=1", "-p", "9", "@" + TunnelLab.INNER4[1],
                      "x.test"],
                     ["curl", "-s", "-m", "2", f"http://{TunnelLab.INNER4[1]}:9/"]):
            lab.run(c, *argv, timeout=10, check=False)
        lab.stop(tcpdump)
    return path


@pytest.mark.root
@pytest.mark.parametrize("fmt,options", [("json", ()), ("json", ("--no-duplicate-keys",)),
                                         ("ek", ())],
                         ids=["json-repeated-keys", "json-lists", "ek-lists"])
def test_tunnel_rows_take_the_outer_headers(fmt, options, tunnel_capture, export):
    archive = export(tunnel_capture, fmt, *EACH_FRAME_ALONE, *options)
    got, _ = assert_same_rows(archive, tunnel_capture, fmt)
    outer = {address_from_text(a) for a in TunnelLab.OUTER_V4 + TunnelLab.OUTER_V6}
    tunnelled = [r for r in got if r["dport"] == 4789]
    assert {r["ip_version"] for r in tunnelled} == {4, 6}
    assert all(r["src"] in outer and r["proto"] == 17 for r in tunnelled)


@pytest.mark.root
def test_tunnel_archive_repeats_keys_that_a_plain_parse_loses(tunnel_capture, export):
    """The case the reader handles is real: tshark repeats the "ip" key, and orjson
    alone would report the inner header."""
    text = export(tunnel_capture, "json", *EACH_FRAME_ALONE).read_bytes()
    inner = {address_from_text(a) for a in TunnelLab.INNER4}
    lost = 0
    for packet in orjson.loads(text):
        layers = packet["_source"]["layers"]
        if layers["frame"]["frame.protocols"].count(":ip:") >= 2 and "ip" in layers:
            lost += address_from_text(layers["ip"]["ip.src"]) in inner
    assert lost > 0


# -- tshark's default: reassembly ------------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("fmt", FORMATS)
def test_default_reassembly_nulls_transport_of_fragments(fmt, captures, export):
    """With reassembly on, tshark dissects a fragmented datagram's transport header on
    its last fragment and not on its first: fragments get null transport columns, every
    other column and every other row is as without reassembly."""
    capture = captures["ethernet.pcap"].path
    table, reader = read(export(capture, fmt))
    assert reader.stats.skipped == {}
    expected = rows(read_table(capture))
    fragments = 0
    for want, have in zip(expected, rows(table), strict=True):
        if want["more_fragments"] or want["frag_offset"]:
            fragments += any(want[c] is not None for c in TRANSPORT)
            want = dict(want, **dict.fromkeys(TRANSPORT))
        assert have == want, f"record {want['record']}"
    assert fragments >= 2  # first fragments of IPv4 and IPv6 datagrams


# -- reading in pieces -----------------------------------------------------------------

class Trickle(io.RawIOBase):
    """A pipe that hands out at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int):
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._step, len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


@pytest.mark.parametrize("fmt", FORMATS)
def test_short_reads_and_small_batches(fmt, export):
    archive = export(SAMPLE, fmt, *EACH_FRAME_ALONE)
    reader = CaptureReader(Trickle(archive.read_bytes(), 777), batch_rows=5, name="pipe")
    batches = list(reader)
    assert max(b.num_rows for b in batches) == 5
    assert rows(pa.Table.from_batches(batches)) == rows(read_table(SAMPLE))
    assert reader.stats.skipped == {}


# -- bad input: counted, resynchronised, never a traceback -------------------------------

def json_packets(text: bytes) -> list[tuple[int, int]]:
    """(start, end) of each packet object of a -T json export, located independently."""
    starts = [m.start() + 3 for m in re.finditer(rb'\n  \{\n    "_index"', text)]
    ends = [m.start() + 4 for m in re.finditer(rb'\n  \}(,|\n\])', text)]
    assert len(starts) == len(ends) > 0
    return list(zip(starts, ends, strict=True))


def damaged(tmp_path, export, fmt: str, damage) -> tuple[list[dict], list[dict], dict]:
    """(clean rows, rows of the damaged archive, skips) for damage(bytes) -> bytes."""
    clean = export(SAMPLE, fmt, *EACH_FRAME_ALONE)
    path = tmp_path / f"damaged.{fmt}"
    path.write_bytes(damage(clean.read_bytes()))
    table, reader = read(path)
    return rows(read_table(clean)), rows(table), reader.stats.skipped


MIDDLE = 1000  # index of the damaged packet


def test_junk_between_packets_is_counted_and_skipped(tmp_path, export):
    junk = b"\n### rotated log line ###\n"

    def damage(text):
        end = json_packets(text)[MIDDLE][1]
        return text[:end] + junk + text[end:]
    clean, got, skipped = damaged(tmp_path, export, "json", damage)
    assert got == clean
    assert skipped == {SKIPPED_BYTES: len(junk.translate(None, b" \t\r\n,[]"))}


@pytest.mark.parametrize("fmt", FORMATS)
def test_broken_packet_is_skipped_and_reading_resumes(tmp_path, export, fmt):
    def damage(text):
        if fmt == "ek":
            lines = text.split(b"\n")
            line = 2 * MIDDLE + 1
            lines[line] = lines[line][:len(lines[line]) // 2]
            return b"\n".join(lines)
        start, end = json_packets(text)[MIDDLE]
        return text[:(start + end) // 2] + text[end:]
    clean, got, skipped = damaged(tmp_path, export, fmt, damage)
    assert skipped == {MALFORMED: 1}
    assert got == clean[:MIDDLE] + clean[MIDDLE + 1:]


def test_garbage_lines_in_ek(tmp_path, export):
    def damage(text):
        lines = text.split(b"\n")
        lines[2 * MIDDLE:2 * MIDDLE] = [b"garbage", b"{\"layers\": [", b"", b"\x00\xff"]
        return b"\n".join(lines)
    clean, got, skipped = damaged(tmp_path, export, "ek", damage)
    assert got == clean
    assert skipped == {MALFORMED: 3}


FIELD = {("json", "time"): rb'"frame\.time_epoch": "([^"]*)",',
         ("json", "number"): rb'"frame\.number": "([^"]*)",',
         ("ek", "time"): rb'"frame_frame_time_epoch":"([^"]*)",',
         ("ek", "number"): rb'"frame_frame_number":"([^"]*)",'}


@pytest.mark.parametrize("fmt", FORMATS)
def test_packet_without_time_or_number(tmp_path, export, fmt):
    """Packets +1 and +2 lose frame.time_epoch and frame.number, +3 gets a bad time."""
    def damage(text):
        times = list(re.finditer(FIELD[fmt, "time"], text))
        numbers = list(re.finditer(FIELD[fmt, "number"], text))
        assert len(times) == len(numbers) == 2295
        edits = [(times[MIDDLE + 1].span(), b""), (numbers[MIDDLE + 2].span(), b""),
                 (times[MIDDLE + 3].span(1), b"x")]
        for (start, end), new in sorted(edits, reverse=True):
            text = text[:start] + new + text[end:]
        return text
    clean, got, skipped = damaged(tmp_path, export, fmt, damage)
    assert skipped == {MISSING: 2, BAD_TIME: 1}
    assert got == clean[:MIDDLE + 1] + clean[MIDDLE + 4:]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["plain", "gzip", "zstd"])
def test_truncated_archive_keeps_the_packets_before_the_cut(tmp_path, export, fmt, kind):
    text = export(SAMPLE, fmt, *EACH_FRAME_ALONE).read_bytes()
    data = {"plain": lambda b: b, "gzip": lambda b: gzip.compress(b, mtime=0),
            "zstd": lambda b: subprocess.run(["zstd", "-c", "-q"], input=b, check=True,
                                             capture_output=True, timeout=60).stdout}[kind](text)
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(data[:len(data) * 3 // 5])
    table, reader = read(path)
    clean = rows(read_table(SAMPLE))
    assert 0 < table.num_rows < len(clean)
    assert rows(table) == clean[:table.num_rows]
    skipped = reader.stats.skipped
    assert skipped and set(skipped) <= {TRUNCATED, COMPRESSION}


@pytest.mark.parametrize("fmt", FORMATS)
def test_oversized_packet_is_skipped(tmp_path, export, monkeypatch, fmt):
    """A packet object larger than MAX_PACKET_BYTES cannot grow the buffer: it is
    counted and passed over, and the packet after it is read."""
    monkeypatch.setattr(tshark_json, "MAX_PACKET_BYTES", 64 * 1024)
    text = export(SAMPLE, fmt, *EACH_FRAME_ALONE).read_bytes()
    if fmt == "json":
        start = json_packets(text)[MIDDLE][0]
    else:
        start = text.index(b"\n", sum(len(line) + 1 for line in text.split(b"\n")[:2 * MIDDLE]))
    brace = text.index(b"{", start + 1)  # "_source"'s object / the EK line's own
    pad = b'"padding": "' + b"x" * 200_000 + b'", '
    text = text[:brace + 1] + pad + text[brace + 1:]
    reader = CaptureReader(Trickle(text, 4096), name="big")
    got = rows(pa.Table.from_batches(list(reader)))
    clean = rows(read_table(SAMPLE))
    assert got == clean[:MIDDLE] + clean[MIDDLE + 1:]
    assert reader.stats.skipped[BAD_LENGTH] == 1
    assert set(reader.stats.skipped) == {BAD_LENGTH, SKIPPED_BYTES}


@pytest.mark.parametrize("fmt", FORMATS)
def test_memory_stays_bounded_as_the_archive_grows(fmt, export):
    """Four times the archive, not more memory: a read chunk, one packet, one batch."""
    text = export(SAMPLE, fmt, *EACH_FRAME_ALONE).read_bytes()
    packets = 600
    if fmt == "json":
        text = text[:json_packets(text)[packets][0]]
    else:
        text = b"\n".join(text.split(b"\n")[:2 * packets]) + b"\n"

    def peak(copies: int) -> int:
        data = text * copies  # arrays back to back / EK lines: both still tshark exports
        tracemalloc.start()
        try:
            reader = CaptureReader(Trickle(data, 1 << 20), name="stream", batch_rows=128)
            assert sum(b.num_rows for b in reader) == packets * copies
            _, top = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert reader.stats.skipped == {}
        return top
    small, large = peak(1), peak(4)
    assert large < 1.25 * small
    assert large < 4 << 20  # the reader's buffer and a copy of it, parsed objects, a batch


@pytest.mark.parametrize("seed", range(4))
def test_random_damage_never_raises_or_hangs(seed, export):
    """Bytes flipped, cut out and pasted in anywhere: rows and counted skips, or a
    CaptureError when the start is no longer a tshark export; nothing else."""
    rng = random.Random(seed)
    fmt = FORMATS[seed % 2]
    data = bytearray(export(SAMPLE, fmt, *EACH_FRAME_ALONE).read_bytes()[:300_000])
    pieces = [b"{", b"}", b'"', b"[", b"]", b"\n", b"\\", b"\xff", b'{"_index"', b'"_index"',
              b'{"index":{}}\n', b'{"layers":{"frame":{}}}\n']
    for _ in range(40):
        at = rng.randrange(64, len(data))  # past the opening, mostly: reading goes on
        action = rng.random()
        if action < 0.4:
            data[at] = rng.randrange(256)
        elif action < 0.6:
            del data[at:at + rng.randint(1, 3000)]
        else:
            data[at:at] = rng.choice(pieces)
    reader = CaptureReader(Trickle(bytes(data), rng.choice([1, 999, 1 << 20])), name="fuzz",
                           batch_rows=rng.choice([1, 100]))
    try:
        rows_read = sum(b.num_rows for b in reader)
    except CaptureError:
        return
    assert 0 < rows_read == reader.stats.packets
    assert reader.stats.skipped


def test_empty_export_has_no_rows(tmp_path):
    path = tmp_path / "empty.json"
    path.write_bytes(b"[\n]\n")
    table, reader = read(path)
    assert table.num_rows == 0
    assert reader.stats.format == "tshark-json"
    assert reader.stats.skipped == {}


@pytest.mark.parametrize("text", [b'{"ifindex": 1, "mtu": 65536}\n',
                                  b'[{"_id": 1, "layers": {}}]',
                                  b"[1, 2, 3]"])
def test_json_that_is_not_a_tshark_export_is_an_error(tmp_path, text):
    path = tmp_path / "other.json"
    path.write_bytes(text)
    with pytest.raises(CaptureError, match="not tshark -T json or -T ek") as caught:
        read_table(path)
    assert str(path) in str(caught.value)


# -- pieces ------------------------------------------------------------------------------

@given(st.integers(-(2**62) // 10**9, 2**62 // 10**9), st.integers(0, 10**9 - 1),
       st.integers(1, 9))
def test_epoch_is_parsed_exactly(seconds, nanos, digits):
    frac = f"{nanos:09d}"[:digits]
    text = f"{seconds}.{frac}"
    expected = abs(seconds) * 10**9 + int(frac.ljust(9, "0"))
    assert tshark_json._epoch_ns(text) == (-expected if text.startswith("-") else expected)


@pytest.mark.parametrize("text", ["", ".5", ".123456789", "1.", "1.0000000001", "1e9",
                                  "0x10", "1_0.5", "1_0.123456789", "+1.123456789",
                                  " 1.123456789", "1.5 ", "١.٥", "١.١٢٣٤٥٦٧٨٩", "1..23456789"])
def test_epoch_rejects_what_tshark_does_not_write(text):
    with pytest.raises(ValueError):
        tshark_json._epoch_ns(text)


def test_repeated_keys_keep_every_value_in_order():
    obj = json.loads('{"a": 1, "b": {"c": 2}, "a": 3, "a": [4]}',
                     object_pairs_hook=tshark_json._keep_repeats)
    assert obj == {"a": [1, 3, [4]], "b": {"c": 2}}


def test_cli_ingests_an_archive(tmp_path, export):
    archive = tmp_path / "lan.json.zst"
    with open(export(SAMPLE, "json", *EACH_FRAME_ALONE), "rb") as source, \
            open(archive, "wb") as sink:
        subprocess.run(["zstd", "-c", "-q"], stdin=source, stdout=sink, check=True, timeout=60)
    done = subprocess.run([sys.executable, "-m", "netsift.cli", "ingest", str(archive),
                           "--out", str(tmp_path / "ds")], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert b"2,295 packets" in done.stdout
