"""netsift's capture readers on damaged, wrong and unusual input.

Every case ends one of two ways (docs/schema.md, "Bad input"): a :class:`CaptureError`
whose message is one line naming the file, or rows plus counted skips in
``ReadStats.skipped``. Damage is applied to real captures (see ``conftest.py``); where
the reader resynchronises, the rows after the damage must equal the clean capture's.
"""

from __future__ import annotations

import bisect
import gzip
import random
import struct
import subprocess
import sys
import tracemalloc
import zlib

import pyarrow as pa
import pytest
import zstandard

from netsift import CaptureError, CaptureReader, read_table
from netsift.ingest import skips
from netsift.ingest.pcap import MAX_CAPLEN
from netsift.ingest.pcapng import MAX_BLOCK
from netsift.schema import PACKET_COLUMNS

TRUNCATED = skips.MESSAGES[skips.TRUNCATED_RECORD]
BAD_LENGTH = skips.MESSAGES[skips.BAD_RECORD_LENGTH]
BAD_BLOCK = skips.MESSAGES[skips.BAD_BLOCK]
SKIPPED_BYTES = skips.MESSAGES[skips.BYTES_SKIPPED]
LINKTYPE = skips.MESSAGES[skips.UNSUPPORTED_LINKTYPE]
UNKNOWN_IFACE = skips.MESSAGES[skips.UNKNOWN_INTERFACE]
COMPRESSION = skips.MESSAGES[skips.CORRUPT_COMPRESSION]
EPB = 6
MIDDLE = 0.5  # where "in the middle" is, as a fraction of the packet records


# -- the files' structure, located independently of netsift ------------------------

def pcap_records(data: bytes) -> list[tuple[int, int]]:
    """(offset, captured length) of each record of a little-endian pcap."""
    records, pos = [], 24
    while pos < len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        records.append((pos, incl))
        pos += 16 + incl
    assert pos == len(data)
    return records


def pcapng_blocks(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, total length) of each block of a little-endian pcapng."""
    blocks, pos = [], 0
    while pos < len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        blocks.append((pos, btype, blen))
        pos += blen
    assert pos == len(data)
    return blocks


def packets(data: bytes, fmt: str) -> list[tuple[int, int]]:
    """(offset, length including headers) of each packet record, pcap or pcapng."""
    if fmt == "pcap":
        return [(off, 16 + incl) for off, incl in pcap_records(data)]
    blocks = pcapng_blocks(data)
    assert {btype for _, btype, _ in blocks} <= {0x0A0D0D0A, 1, EPB}
    return [(off, blen) for off, btype, blen in blocks if btype == EPB]


def middle(data: bytes, fmt: str) -> tuple[int, int, int]:
    """(index, offset, length) of the packet record in the middle of a capture."""
    records = packets(data, fmt)
    index = int(len(records) * MIDDLE)
    return (index, *records[index])


# -- reading -------------------------------------------------------------------------

def read(path) -> tuple[pa.Table, dict[str, int]]:
    """The rows of a capture file and its counted skips."""
    table = read_table(path)
    capture = CaptureReader(path)
    assert sum(batch.num_rows for batch in capture) == capture.stats.packets == table.num_rows
    assert set(table.column("source").to_pylist()) <= {str(path)}
    return table, capture.stats.skipped


def rows(table: pa.Table, *, drop: tuple[str, ...] = ()) -> list[dict]:
    return table.drop_columns(["source", *drop]).to_pylist()


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_capture_error(path, *words: str) -> str:
    with pytest.raises(CaptureError) as caught:
        read_table(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message
    return message


def seed(seeds, fmt: str) -> bytes:
    return getattr(seeds, fmt).read_bytes()


FORMATS = ("pcap", "pcapng")


# -- file ends inside a record -----------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["header", "data", "trailer"])
def test_truncated_last_record_is_counted(seeds, tmp_path, fmt, where):
    data = seed(seeds, fmt)
    offset, length = packets(data, fmt)[-1]
    # pcap has no trailer: cutting its last byte leaves the record one byte short.
    cut = {"header": offset + 6, "data": offset + length // 2,
           "trailer": offset + length - 1}[where]
    table, skipped = read(write(tmp_path, f"cut.{fmt}", data[:cut]))
    assert skipped == {TRUNCATED: 1}
    assert rows(table) == rows(seeds.table(fmt))[:-1]


# -- a record length that cannot be right, in the middle ---------------------------

# A length the format allows, but one that ends beyond the end of the file: the reader
# must find the records after it rather than take the rest for a truncated last record.
@pytest.mark.parametrize("value", ["max_uint32", "one_over_limit", "past_end_of_file"])
def test_pcap_impossible_length_resynchronises(seeds, tmp_path, value):
    data = bytearray(seed(seeds, "pcap"))
    index, offset, length = middle(data, "pcap")
    incl = {"max_uint32": 0xFFFFFFFF, "one_over_limit": MAX_CAPLEN + 1,
            "past_end_of_file": MAX_CAPLEN}[value]
    assert incl > len(data) - offset - 16
    struct.pack_into("<I", data, offset + 8, incl)
    table, skipped = read(write(tmp_path, "bad.pcap", bytes(data)))
    # The damaged record's bytes are passed over, its header included.
    assert skipped == {BAD_LENGTH: 1, SKIPPED_BYTES: length}
    clean = rows(seeds.table("pcap"), drop=("record",))
    assert rows(table, drop=("record",)) == clean[:index] + clean[index + 1:]
    assert_records_increase(table)


@pytest.mark.parametrize("value", ["max_uint32", "over_max_block", "unaligned", "too_short",
                                   "past_end_of_file"])
def test_pcapng_impossible_block_length_resynchronises(seeds, tmp_path, value):
    data = bytearray(seed(seeds, "pcapng"))
    index, offset, length = middle(data, "pcapng")
    blen = {"max_uint32": 0xFFFFFFFC, "over_max_block": MAX_BLOCK + 4,
            "unaligned": length + 2, "too_short": 8,
            "past_end_of_file": MAX_BLOCK}[value]
    struct.pack_into("<I", data, offset + 4, blen)
    assert_resynchronised_over_block(seeds, tmp_path, data, index, length)


@pytest.mark.parametrize("value", ["minus_4", "plus_4", "zero", "max_uint32"])
def test_pcapng_mismatched_trailing_length_resynchronises(seeds, tmp_path, value):
    data = bytearray(seed(seeds, "pcapng"))
    index, offset, length = middle(data, "pcapng")
    trailing = {"minus_4": length - 4, "plus_4": length + 4, "zero": 0,
                "max_uint32": 0xFFFFFFFF}[value]
    struct.pack_into("<I", data, offset + length - 4, trailing)
    assert_resynchronised_over_block(seeds, tmp_path, data, index, length)


def assert_resynchronised_over_block(seeds, tmp_path, data, index, length) -> None:
    table, skipped = read(write(tmp_path, "bad.pcapng", bytes(data)))
    # The damaged block is passed over whole, 4 bytes at a time.
    assert skipped == {BAD_BLOCK: 1, SKIPPED_BYTES: length}
    clean = rows(seeds.table("pcapng"), drop=("record",))
    assert rows(table, drop=("record",)) == clean[:index] + clean[index + 1:]
    assert_records_increase(table)


def assert_records_increase(table: pa.Table) -> None:
    records = table.column("record").to_pylist()
    assert records == sorted(set(records))
    assert records[0] >= 1


# -- garbage inside the file ---------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", [1000, 1001])
def test_garbage_in_the_middle(seeds, tmp_path, fmt, size):
    data = seed(seeds, fmt)
    index, offset, _ = middle(data, fmt)
    garbage = random.Random(f"{fmt}{size}").randbytes(size)
    # The garbage does not begin with a plausible header (a precondition of this
    # seed, so the expected skips are exact): it fails its length check at once.
    if fmt == "pcap":
        assert struct.unpack_from("<I", garbage, 8)[0] > MAX_CAPLEN
    else:
        blen = struct.unpack_from("<I", garbage, 4)[0]
        assert blen % 4 or blen > MAX_BLOCK
    table, skipped = read(write(tmp_path, f"garbage.{fmt}",
                                data[:offset] + garbage + data[offset:]))
    clean = rows(seeds.table(fmt))
    got = rows(table)
    assert got[:index] == clean[:index]
    if fmt == "pcapng" and size % 4:
        # pcapng blocks are 32-bit aligned and the reader scans for them 4 bytes at a
        # time: garbage of another length hides the rest of the file, counted.
        assert got == clean[:index]
        assert skipped == {BAD_BLOCK: 1, SKIPPED_BYTES: len(data) + size - offset}
        return
    # Garbage is not a record: every record keeps its number.
    assert got == clean
    first = BAD_LENGTH if fmt == "pcap" else BAD_BLOCK
    assert skipped == {first: 1, SKIPPED_BYTES: size}


# -- pcapng packets the reader must skip one by one --------------------------------

@pytest.mark.parametrize("interface", [1, 0xFFFF, 0xFFFFFFFF])
def test_pcapng_undeclared_interface(seeds, tmp_path, interface):
    data = bytearray(seed(seeds, "pcapng"))
    assert sum(btype == 1 for _, btype, _ in pcapng_blocks(data)) == 1
    index, offset, _ = middle(data, "pcapng")
    struct.pack_into("<I", data, offset + 8, interface)
    table, skipped = read(write(tmp_path, "iface.pcapng", bytes(data)))
    assert skipped == {UNKNOWN_IFACE: 1}
    clean = rows(seeds.table("pcapng"))
    # The skipped packet still had a record number: later rows keep theirs.
    assert rows(table) == clean[:index] + clean[index + 1:]


def test_pcapng_unsupported_link_type_is_counted(seeds):
    table, skipped = read(seeds.user0_pcapng)
    assert table.num_rows == 0
    assert skipped == {LINKTYPE: seeds.table("pcapng").num_rows}


def test_pcap_unsupported_link_type_is_an_error(seeds):
    # editcap -T user0 writes link type 147 (LINKTYPE_USER0).
    assert_capture_error(seeds.user0_pcap, "link type 147", "not supported")


# -- not a capture at all --------------------------------------------------------------

def test_empty_file(tmp_path):
    assert_capture_error(write(tmp_path, "empty.pcap", b""), "empty")


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_magic(seeds, tmp_path, fmt):
    data = seed(seeds, fmt)
    assert_capture_error(write(tmp_path, f"magic.{fmt}", b"\x00\x11\x22\x33" + data[4:]),
                         "not a pcap or pcapng capture", "0x00112233")


@pytest.mark.parametrize("argv", [["ip", "-j", "addr", "show", "lo"],
                                  ["ip", "-j", "-p", "route", "show", "table", "local"]])
def test_json_that_is_not_a_tshark_export(tmp_path, argv):
    path = tmp_path / "ip.json"
    path.write_bytes(subprocess.run(argv, capture_output=True, check=True, timeout=10).stdout)
    assert_capture_error(path, "JSON")


def test_directory(tmp_path):
    assert_capture_error(tmp_path, "directory")


def test_missing_file(tmp_path):
    assert_capture_error(tmp_path / "nothing.pcap", "no such file")


@pytest.mark.parametrize("size", [1, 4, 23])
def test_truncated_pcap_header(seeds, tmp_path, size):
    path = write(tmp_path, "head.pcap", seed(seeds, "pcap")[:size])
    # Fewer than 4 bytes cannot even be recognised as pcap.
    assert_capture_error(path, "not a pcap" if size < 4 else "truncated pcap header")


@pytest.mark.parametrize("fmt", FORMATS)
def test_header_only_capture_has_no_rows(seeds, tmp_path, fmt):
    # editcap keeping a record the capture does not have: headers, no packets.
    path = tmp_path / f"none.{fmt}"
    subprocess.run(["editcap", "-F", fmt, "-r", str(getattr(seeds, fmt)), str(path),
                    "1000000"], check=True, capture_output=True, timeout=30)
    assert len(packets(path.read_bytes(), fmt)) == 0
    table, skipped = read(path)
    assert skipped == {}
    assert table.num_rows == 0
    assert table.column_names == list(PACKET_COLUMNS)


# -- compressed input, cut or corrupt -----------------------------------------------

def compressed(seeds, kind: str) -> bytes:
    tool = {"gzip": ["gzip", "-c", "-n"], "zstd": ["zstd", "-c", "-q"]}[kind]
    with open(seeds.pcap, "rb") as source:
        return subprocess.run(tool, stdin=source, capture_output=True, check=True,
                              timeout=30).stdout


SUFFIX = {"gzip": "gz", "zstd": "zst"}


def reference_decode(kind: str, data: bytes) -> bytes:
    """What zlib or libzstd decode from a (possibly cut) stream, before any error."""
    decoder = (zlib.decompressobj(wbits=31) if kind == "gzip"
               else zstandard.ZstdDecompressor().decompressobj())
    return decoder.decompress(data)


def whole_records(pcap: bytes) -> int:
    count, pos = 0, 24
    while pos + 16 <= len(pcap):
        pos += 16 + struct.unpack_from("<I", pcap, pos + 8)[0]
        count += pos <= len(pcap)
    return count


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_truncated_compressed_capture_keeps_rows_before_the_cut(seeds, tmp_path, kind):
    data = compressed(seeds, kind)
    # Cut halfway between the shortest prefix that decodes to a packet and the end of
    # the compressed data (zstd decodes whole blocks of up to 128 KiB at a time).
    first = bisect.bisect_left(range(len(data)), True,
                               key=lambda n: whole_records(reference_decode(kind, data[:n])) > 0)
    cut = data[:(first + len(data) - 8) // 2]
    expected = whole_records(reference_decode(kind, cut))
    clean = rows(seeds.table("pcap"))
    assert 0 < expected < len(clean)
    table, skipped = read(write(tmp_path, f"cut.pcap.{SUFFIX[kind]}", cut))
    assert skipped.get(COMPRESSION) == 1
    assert set(skipped) <= {COMPRESSION, TRUNCATED}
    # Every packet the stream held before the cut, none after.
    assert rows(table) == clean[:expected]


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_corrupt_compressed_checksum(seeds, tmp_path, kind):
    data = bytearray(compressed(seeds, kind))
    # gzip ends with CRC32 then size; zstd -c writes a 4-byte content checksum last.
    data[-8 if kind == "gzip" else -1] ^= 0xFF
    path = write(tmp_path, f"crc.pcap.{SUFFIX[kind]}", bytes(data))
    clean = rows(seeds.table("pcap"))
    if kind == "zstd":
        # libzstd checks the checksum in the same call that decodes the frame's last
        # block, so a small file may fail before its first packet: a clear error then.
        try:
            table, skipped = read(path)
        except CaptureError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc) and "zstd" in str(exc)
            return
    else:
        table, skipped = read(path)
    assert skipped == {COMPRESSION: 1}
    assert rows(table) == clean[:table.num_rows]
    if kind == "gzip":
        # The CRC is checked after the last byte was handed out.
        assert table.num_rows == len(clean)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_damaged_stream_shorter_than_the_pcap_header(seeds, tmp_path, kind):
    # 20 bytes decompress, then the stream fails: gzip's trailer is cut, zstd's
    # checksum is wrong.
    head = seed(seeds, "pcap")[:20]
    if kind == "gzip":
        data = gzip.compress(head, mtime=0)[:-8]
    else:
        data = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(head))
        data[-1] ^= 0xFF
    path = write(tmp_path, f"tiny.pcap.{SUFFIX[kind]}", bytes(data))
    assert_capture_error(path, kind)


def test_corrupt_deflate_data(seeds, tmp_path):
    data = bytearray(compressed(seeds, "gzip"))
    # The first deflate block header (after gzip's 10-byte header) gets block type 3,
    # which RFC 1951 reserves: an error at the first byte of data.
    data[10] |= 0b110
    assert_capture_error(write(tmp_path, "deflate.pcap.gz", bytes(data)), "gzip")


# -- pipes -------------------------------------------------------------------------------

def test_read_from_a_pipe(seeds):
    with subprocess.Popen(["cat", str(seeds.pcapng)], stdout=subprocess.PIPE) as cat:
        capture = CaptureReader(cat.stdout, name="piped", batch_rows=7)
        batches = list(capture)
    assert cat.returncode == 0
    table = pa.Table.from_batches(batches)
    assert capture.stats.skipped == {}
    assert rows(table) == rows(seeds.table("pcapng"))
    assert set(table.column("source").to_pylist()) == {"piped"}
    assert capture.stats.bytes_read == seeds.pcapng.stat().st_size


# Writes one pcap header, then the seed's records over and over: a capture far larger
# than the reader's buffer arriving through a pipe.
REPEATER = """
import sys
data = open(sys.argv[1], "rb").read()
out = sys.stdout.buffer
out.write(data[:24])
for _ in range(int(sys.argv[2])):
    out.write(data[24:])
"""


def stream_through_pipe(path, repeats: int) -> tuple[int, int, int]:
    """(rows, bytes read, peak traced allocation) for the repeated capture in a pipe."""
    tracemalloc.start()
    try:
        with subprocess.Popen([sys.executable, "-c", REPEATER, str(path), str(repeats)],
                              stdout=subprocess.PIPE) as source:
            capture = CaptureReader(source.stdout, name="stream", batch_rows=4096)
            rows_seen = sum(batch.num_rows for batch in capture)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert source.returncode == 0
    assert capture.stats.skipped == {}
    return rows_seen, capture.stats.bytes_read, peak


def test_pipe_is_read_in_bounded_memory(seeds):
    size = seeds.pcap.stat().st_size
    rows_per_copy = seeds.table("pcap").num_rows
    small = max(1, (16 << 20) // size)
    stream_through_pipe(seeds.pcap, 1)  # one-time allocations (imports, kernels) first
    rows, read_small, peak_small = stream_through_pipe(seeds.pcap, small)
    assert rows == small * rows_per_copy
    rows, read_large, peak_large = stream_through_pipe(seeds.pcap, 4 * small)
    assert rows == 4 * small * rows_per_copy
    assert read_large == 24 + 4 * small * (size - 24)
    # Four times the input, not more memory: the reader holds a buffer and a batch.
    assert peak_large < 1.25 * peak_small
    assert peak_large < read_large // 3
