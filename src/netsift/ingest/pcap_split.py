"""Cut a plain pcap into byte ranges that begin on record boundaries, to read in parallel.

A pcap has no index: where a record starts is known only by walking the records from
the first. :func:`index_range` finds, for a byte range ``[start, stop)``, the first
offset at or after ``start`` where a chain of :data:`CHAIN_RECORDS` plausible record
headers begins (the reader's own resynchronisation test, ``pcap._plausible``), then walks
record headers from there to the first record starting at or after ``stop``, counting
records. Only headers are read; nothing is decoded.

Ranges are trusted only when they agree (:func:`check_ranges`): the first begins at the
first record (offset 24), each ends exactly where the next one found its first record,
and the last ends at the end of the file. Each walk starts where the previous one ended,
so by induction every boundary is a true record boundary. The walk takes a record on
exactly the reader's terms (captured length at most the header's maximum, the record
inside the file), so a range read as a capture of its own (:class:`PcapRange`) yields the
rows the sequential reader yields for those records. A record with an impossible length
(corruption), a record cut by the end of the file, or ranges that disagree make the
caller read the file whole instead: the reader's resynchronisation and skip counts then
stay exactly those of a sequential read.

Only uncompressed pcap is split: pcapng packets refer to interface blocks that may lie
anywhere before them, and a compressed stream cannot be entered in the middle.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from numba import njit

from netsift.errors import CaptureError
from netsift.ingest import pcap
from netsift.ingest.decode import rd32

#: Consecutive plausible record headers that mark a record boundary in the middle of a
#: file. Data that merely looks like one header (a run of zero bytes) rarely chains.
CHAIN_RECORDS = 8


@dataclass(frozen=True)
class RangeIndex:
    """Records of one byte range: the first record's offset, the offset after the last
    record starting before the range's end, the record count, and whether every record
    on the way was one the reader decodes without skipping."""

    first: int
    end: int
    records: int
    clean: bool


# Compiled on first use in each process (no on-disk cache): the kernels inline the
# reader's header test, and numba's cache would not notice an edit to pcap.py.
@njit(nogil=True)
def _first_record(buf, q, swapped, frac_limit, max_caplen, last_sec, chain):
    """The first offset from q where ``chain`` plausible headers follow one another (or
    reach the end of the buffer exactly); len(buf) if there is none."""
    end = len(buf)
    while q < end:
        p, n, ok = q, 0, True
        while n < chain and p != end:
            if pcap._plausible(buf, p, end, swapped, frac_limit, max_caplen, last_sec) != 1:
                ok = False
                break
            p += pcap.RECORD_HEADER + rd32(buf, p + 8, swapped)
            if p > end:
                ok = False
                break
            n += 1
        if ok:
            return q
        q += 1
    return end


@njit(nogil=True)
def _walk_headers(buf, pos, stop, swapped, max_caplen):
    """(offset, records, clean): walk records from pos to the first starting at or after
    stop. Not clean at a record the reader would not decode as it stands."""
    end = len(buf)
    records = 0
    while pos < stop:
        if end - pos < pcap.RECORD_HEADER:
            return pos, records, False
        incl = rd32(buf, pos + 8, swapped)
        if incl > max_caplen or end - pos - pcap.RECORD_HEADER < incl:
            return pos, records, False
        pos += pcap.RECORD_HEADER + incl
        records += 1
    return pos, records, True


def plain_header(path: str | os.PathLike) -> pcap.PcapHeader | None:
    """The global header if ``path`` is an uncompressed pcap of a supported link type."""
    with open(path, "rb") as handle:
        raw = handle.read(pcap.GLOBAL_HEADER)
    if raw[:4] not in pcap.MAGICS or len(raw) < pcap.GLOBAL_HEADER:
        return None
    try:
        return pcap.PcapHeader(raw, os.fspath(path))
    except CaptureError:
        return None


def index_range(path: str | os.PathLike, start: int, stop: int) -> RangeIndex | None:
    """Index the records beginning in ``[start, stop)`` of a plain pcap (byte offsets);
    None when the file is not one (pcapng, compressed, JSON, unsupported link type)."""
    header = plain_header(path)
    if header is None:
        return None
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        size = len(buf)
        first_sec = (int(rd32(buf, pcap.GLOBAL_HEADER, header.swapped))
                     if size >= pcap.GLOBAL_HEADER + pcap.RECORD_HEADER else 0)
        if start <= pcap.GLOBAL_HEADER:
            first = pcap.GLOBAL_HEADER
        else:
            frac_limit = 1_000_000_000 if header.nanos else 1_000_000
            first = int(_first_record(buf, start, header.swapped, frac_limit,
                                      header.max_caplen, first_sec, CHAIN_RECORDS))
        end, records, clean = _walk_headers(buf, first, min(stop, size), header.swapped,
                                            header.max_caplen)
        return RangeIndex(first, int(end), int(records), bool(clean))
    finally:
        buf._mmap.close()


def check_ranges(size: int, indexes: list[RangeIndex | None]) -> bool:
    """Whether consecutive range indexes of a file of ``size`` bytes tile its records."""
    if not indexes or any(i is None or not i.clean for i in indexes):
        return False
    if indexes[0].first != pcap.GLOBAL_HEADER or indexes[-1].end != size:
        return False
    return all(a.end == b.first for a, b in zip(indexes, indexes[1:], strict=False))


class PcapRange(io.RawIOBase):
    """A plain pcap's global header followed by its bytes ``[start, stop)``: the records
    of one range, readable by :class:`netsift.CaptureReader` as a capture of their own.
    The file is opened on the first read."""

    def __init__(self, path: str | os.PathLike, start: int, stop: int):
        self._path = os.fspath(path)
        self._handle = None
        self._header = b""
        self._pos, self._stop = start, stop

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._handle is None:
            self._handle = open(self._path, "rb", buffering=0)
            self._header = self._handle.read(pcap.GLOBAL_HEADER)
        if self._header:
            n = min(len(buffer), len(self._header))
            buffer[:n] = self._header[:n]
            self._header = self._header[n:]
            return n
        n = min(len(buffer), self._stop - self._pos)
        if n <= 0:
            return 0
        got = os.preadv(self._handle.fileno(), [memoryview(buffer)[:n]], self._pos)
        self._pos += got
        return got

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        super().close()
