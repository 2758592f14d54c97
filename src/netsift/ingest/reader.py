"""Open a capture (file, pipe, compressed) and yield Arrow record batches of packets.

One loop serves every container format: it keeps a byte buffer, refills it from the
input in chunks, and hands it to the format's compiled ``walk``, which decodes as many
whole records as the buffer holds. Memory stays bounded by the buffer (grown only to
hold one maximal record) and one batch of rows.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import zstandard

from netsift.errors import CaptureError
from netsift.ingest import pcap, pcapng, skips, tshark_json
from netsift.ingest.decode import Columns

# Small enough that bytes just read are still in the core's cache when the walk decodes
# them; with 8 MiB reads the walk found them evicted and ran ~25% slower.
CHUNK_BYTES = 256 * 1024
DEFAULT_BATCH_ROWS = 256 * 1024

_COMPRESSION_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
)


@dataclass
class ReadStats:
    """What one capture yielded: packets decoded, bytes consumed, skips by reason."""

    source: str
    format: str = ""
    compression: str = ""
    packets: int = 0
    bytes_read: int = 0
    counters: np.ndarray = field(default_factory=skips.new_counters)

    @property
    def skipped(self) -> dict[str, int]:
        return skips.describe(self.counters)


class _Prefixed(io.RawIOBase):
    """A stream that first replays bytes already peeked from it."""

    def __init__(self, prefix: bytes, stream: BinaryIO):
        self._prefix = prefix
        # One underlying read per call: a decompressor whose next read fails has then
        # handed over everything it decoded before the damage (readinto would drop it).
        self._read_once = getattr(stream, "readinto1", None) or stream.readinto

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._read_once(buffer)


def _read_full(stream: BinaryIO, n: int) -> bytes:
    """Up to n bytes, looping over short reads (pipes)."""
    parts = []
    while n > 0:
        part = stream.read(n)
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _decompressor(kind: str, stream: BinaryIO) -> BinaryIO:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(stream, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(stream, mode="rb")
    return _ZstdFrames(stream)


class _ZstdFrames(io.RawIOBase):
    """Decoded zstd frames, one after another.

    zstandard's ``stream_reader`` ends a frame cut short as if it were complete; this
    raises :class:`EOFError` there instead, after every byte decoded before the cut.
    A decompressobj call cannot cap its output, so input goes in small pieces: a zstd
    block (at most 128 KiB out) costs at least 4 bytes in, bounding one call's output.
    """

    INPUT_BYTES = 8 * 1024

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._decoder = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            data = self._stream.read(self.INPUT_BYTES)
            if not data:
                if self._in_frame:
                    raise EOFError("zstd data ends inside a frame")
                return 0
            self._out = memoryview(self._decode(data))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decode(self, data: bytes) -> bytes:
        out = []
        while data:
            self._in_frame = True
            out.append(self._decoder.decompress(data))
            if not self._decoder.eof:
                break
            self._in_frame = False
            data = self._decoder.unused_data
            self._decoder = zstandard.ZstdDecompressor().decompressobj()
        return b"".join(out)


# zlib.error (corrupt deflate data in a gzip member) is not an OSError.
_DECOMPRESS_ERRORS = (EOFError, zstandard.ZstdError, gzip.BadGzipFile, lzma.LZMAError,
                      OSError, zlib.error)


class CaptureReader:
    """Iterate over a capture's packets as :data:`netsift.schema.PACKET_SCHEMA` batches.

    ``source`` is a path, ``"-"`` for standard input, or a binary file object. Batches
    hold ``batch_rows`` rows except the last; with ``eager`` (live pipes) a batch is also
    yielded whenever a read returns, so packets arrive as they are captured.
    :attr:`stats` is complete once iteration ends. Raises :class:`CaptureError` if the
    input is not a readable capture at all.
    """

    def __init__(self, source: str | os.PathLike | BinaryIO, *,
                 batch_rows: int = DEFAULT_BATCH_ROWS, name: str | None = None,
                 eager: bool = False):
        self.batch_rows = batch_rows
        self.eager = eager
        if isinstance(source, (str, os.PathLike)):
            self.name = name or os.fspath(source)
            self._path = None if os.fspath(source) == "-" else os.fspath(source)
            self._stream = None
        else:
            self.name = name or getattr(source, "name", "<stream>")
            self._path = None
            self._stream = source
        self.stats = ReadStats(source=self.name)

    # -- opening ---------------------------------------------------------------------

    def _open_raw(self) -> BinaryIO:
        if self._stream is not None:
            return self._stream
        if self._path is None:
            # Unbuffered, so a live pipe yields whatever has arrived instead of blocking.
            return getattr(sys.stdin.buffer, "raw", sys.stdin.buffer)
        if os.path.isdir(self._path):
            raise CaptureError(f"{self._path}: is a directory, not a capture file")
        try:
            return open(self._path, "rb", buffering=0)
        except FileNotFoundError:
            raise CaptureError(f"{self._path}: no such file") from None
        except PermissionError:
            raise CaptureError(f"{self._path}: permission denied") from None
        except OSError as exc:
            raise CaptureError(f"{self._path}: cannot open ({exc.strerror})") from None

    def _open(self) -> tuple[BinaryIO, list[BinaryIO]]:
        raw = self._open_raw()
        opened = [raw] if self._path is not None else []
        head = _read_full(raw, 8)
        stream: BinaryIO = _Prefixed(head, raw)
        for magic, kind in _COMPRESSION_MAGICS:
            if head.startswith(magic):
                self.stats.compression = kind
                stream = _decompressor(kind, stream)
                opened.insert(0, stream)
                try:
                    head = _read_full(stream, 4)
                except _DECOMPRESS_ERRORS as exc:
                    raise CaptureError(f"{self.name}: corrupt {kind} data ({exc})") from None
                stream = _Prefixed(head, stream)
                break
        if not head:
            raise CaptureError(f"{self.name}: empty file")
        return stream, opened

    # -- iteration -------------------------------------------------------------------

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        stream, opened = self._open()
        try:
            yield from self._batches(stream)
        finally:
            for handle in opened:
                handle.close()

    def _batches(self, stream: BinaryIO) -> Iterator[pa.RecordBatch]:
        magic = _read_full(stream, 4)
        self.stats.bytes_read += len(magic)
        if magic in pcap.MAGICS:
            self.stats.format = "pcap"
            try:
                rest = _read_full(stream, pcap.GLOBAL_HEADER - 4)
            except _DECOMPRESS_ERRORS as exc:
                what = f"{self.stats.compression} data" if self.stats.compression else "input"
                raise CaptureError(f"{self.name}: corrupt {what} ({exc})") from None
            header = pcap.PcapHeader(magic + rest, self.name)
            self.stats.bytes_read += pcap.GLOBAL_HEADER - 4
            state = pcap.new_state()

            def walk(buf, pos, end, final, cols, row, capacity):
                return pcap.walk(buf, pos, end, final, header.swapped, header.nanos,
                                 header.linktype, header.max_caplen, state,
                                 self.stats.counters, cols, row, capacity)
            prefix = b""
        elif magic == pcapng.MAGIC:
            self.stats.format = "pcapng"
            state, ifaces = pcapng.new_state()

            def walk(buf, pos, end, final, cols, row, capacity):
                return pcapng.walk(buf, pos, end, final, state, ifaces,
                                   self.stats.counters, cols, row, capacity)
            prefix = magic
        elif tshark_json.looks_like_json(magic):
            walk = tshark_json.Walk(self.stats)  # sets stats.format once it knows json/ek
            prefix = magic
        else:
            raise CaptureError(f"{self.name}: {_describe_unknown(magic)}")
        yield from self._drive(stream, prefix, walk)

    def _drive(self, stream: BinaryIO, prefix: bytes, walk) -> Iterator[pa.RecordBatch]:
        buf = np.empty(CHUNK_BYTES * 2, dtype=np.uint8)
        buf[:len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
        fill, pos, eof, starved = len(prefix), 0, False, True
        cols, row = Columns(self.batch_rows), 0
        spare = None
        while True:
            # Read only when the walk ran out of bytes, never merely because a batch filled.
            if starved and not eof:
                if pos:
                    buf[:fill - pos] = buf[pos:fill]
                    fill -= pos
                    pos = 0
                if len(buf) - fill < CHUNK_BYTES:  # a record longer than the buffer holds
                    buf = np.concatenate([buf[:fill], np.empty(len(buf), dtype=np.uint8)])
                try:
                    got = stream.readinto(memoryview(buf)[fill:fill + CHUNK_BYTES])
                except _DECOMPRESS_ERRORS as exc:
                    if not self.stats.compression:
                        raise CaptureError(f"{self.name}: read failed ({exc})") from None
                    self.stats.counters[skips.CORRUPT_COMPRESSION] += 1
                    got = 0
                if not got:
                    eof = True
                fill += got or 0
                self.stats.bytes_read += got or 0
            pos, row = walk(buf, pos, fill, eof, cols.arrays, row, self.batch_rows)
            starved = row < self.batch_rows
            if not starved or (row and (eof or self.eager)):
                self.stats.packets += row
                yield cols.to_arrow(row, self.name)
                # Batches share the arrays (zero-copy); reuse the set from two batches ago
                # once nobody holds its batch any more: fresh arrays cost page faults.
                if spare is not None and spare.released():
                    cols, spare = spare, cols
                else:
                    cols, spare = Columns(self.batch_rows), cols
                row = 0
            if eof and pos >= fill:
                return


def _describe_unknown(magic: bytes) -> str:
    if magic[:1] in (b"[", b"{"):
        return "looks like JSON, not a pcap or pcapng capture"
    return f"not a pcap or pcapng capture (starts with 0x{magic.hex() or 'nothing'})"


def read_packets(source: str | os.PathLike | BinaryIO, *,
                 batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Yield the packets of one capture as Arrow record batches (see :class:`CaptureReader`)."""
    return iter(CaptureReader(source, batch_rows=batch_rows))


def read_table(source: str | os.PathLike | BinaryIO) -> pa.Table:
    """All packets of one capture in one Arrow table (small captures, tests)."""
    reader = CaptureReader(source)
    batches = list(reader)
    if not batches:
        return pa.Table.from_batches([], schema=_empty_schema())
    return pa.Table.from_batches(batches)


def _empty_schema() -> pa.Schema:
    return Columns(0).to_arrow(0, "").schema
