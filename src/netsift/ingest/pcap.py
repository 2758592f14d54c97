"""Classic pcap: the global header and a compiled walk over its records.

Layout (tcpdump.org pcap format): a 24-byte global header, then records of a 16-byte
header (seconds, microseconds or nanoseconds, captured length, original length) and the
captured bytes. Both byte orders and both timestamp resolutions are read.

A record header with an impossible captured length loses the record boundary; the walk
then scans forward for the next position whose header, and the one after it, look like
records (resynchronisation), counting the bytes it passed over.
"""

from __future__ import annotations

import struct

import numpy as np
from numba import njit

from netsift.errors import CaptureError
from netsift.ingest import skips
from netsift.ingest.decode import (
    C_CAPLEN,
    C_IFACE,
    C_RECORD,
    C_TS,
    C_VALID,
    C_WIRELEN,
    SUPPORTED_LINKTYPES,
    V_TS,
    decode_frame,
    rd32,
)

GLOBAL_HEADER = 24
RECORD_HEADER = 16
# Largest captured length accepted (Wireshark's limit for ordinary link types).
MAX_CAPLEN = 262144

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
MAGICS = {
    b"\xd4\xc3\xb2\xa1": (False, False),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (True, False),  # big-endian, microseconds
    b"\x4d\x3c\xb2\xa1": (False, True),  # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (True, True),  # big-endian, nanoseconds
}

# Kernel state slots (int64 array carried between calls).
S_RECORD, S_RESYNC, S_LAST_SEC = 0, 1, 2
STATE_SLOTS = 3


class PcapHeader:
    """The parsed 24-byte global header."""

    def __init__(self, raw: bytes, source: str):
        if len(raw) < GLOBAL_HEADER:
            raise CaptureError(f"{source}: truncated pcap header ({len(raw)} of 24 bytes)")
        swapped, nanos = MAGICS[raw[:4]]
        order = ">" if swapped else "<"
        major, minor, _zone, _sigfigs, snaplen, network = struct.unpack(
            order + "HHiIII", raw[4:24])
        self.swapped = swapped
        self.nanos = nanos
        self.version = (major, minor)
        self.snaplen = snaplen
        # Bits 16-31 may carry FCS information (pcap spec); the link type is the low 16.
        self.linktype = network & 0xFFFF
        if self.linktype not in SUPPORTED_LINKTYPES:
            names = ", ".join(f"{k} ({v})" for k, v in sorted(SUPPORTED_LINKTYPES.items()))
            raise CaptureError(
                f"{source}: link type {self.linktype} is not supported (supported: {names})")
        self.max_caplen = max(MAX_CAPLEN, snaplen if snaplen <= (1 << 24) else 0)


def new_state() -> np.ndarray:
    return np.zeros(STATE_SLOTS, dtype=np.int64)


@njit(inline="always")
def _plausible(buf, q, end, swapped, frac_limit, max_caplen, last_sec):
    """0: not a record header at q; 1: looks like one; 2: need more bytes to tell."""
    if end - q < RECORD_HEADER:
        return 2
    sec = rd32(buf, q, swapped)
    frac = rd32(buf, q + 4, swapped)
    incl = rd32(buf, q + 8, swapped)
    orig = rd32(buf, q + 12, swapped)
    if incl > max_caplen or orig < incl or frac >= frac_limit:
        return 0
    if last_sec > 0 and (sec < last_sec - 86400 or sec > last_sec + 86400 * 366):
        return 0
    return 1


@njit(inline="always")
def _next_record(buf, q, end, final, swapped, frac_limit, max_caplen, last_sec):
    """(offset, found): the first offset from q where a plausible record header is
    followed by another (or, with ``final``, ends the input); found is False where the
    bytes run out first."""
    while True:
        verdict = _plausible(buf, q, end, swapped, frac_limit, max_caplen, last_sec)
        if verdict == 2:
            return q, False
        if verdict == 1:
            nxt = q + RECORD_HEADER + rd32(buf, q + 8, swapped)
            if nxt == end and final:
                return q, True
            follow = _plausible(buf, nxt, end, swapped, frac_limit, max_caplen, last_sec)
            if follow == 1:
                return q, True
            if follow == 2 and not final:
                return q, False
        q += 1


@njit(cache=True, nogil=True, _nrt=False)
def walk(buf, pos, end, final, swapped, nanos, linktype, max_caplen, state, counters,
         cols, row, capacity):
    """Decode records from ``buf[pos:end]`` into rows ``row..capacity``.

    Returns ``(pos, row)``: where to continue and the next free row. Stops when the
    batch is full or more bytes are needed; with ``final`` the input has ended and a
    partial record is counted as truncated.
    """
    frac_limit = 1_000_000_000 if nanos else 1_000_000
    frac_scale = 1 if nanos else 1000
    while row < capacity:
        if state[S_RESYNC]:
            q, found = _next_record(buf, pos, end, final, swapped, frac_limit, max_caplen,
                                    state[S_LAST_SEC])
            counters[skips.BYTES_SKIPPED] += q - pos
            pos = q
            if found:
                state[S_RESYNC] = 0
            elif final:
                counters[skips.BYTES_SKIPPED] += end - pos
                pos = end
                return pos, row
            else:
                return pos, row
        if end - pos < RECORD_HEADER:
            if final and end > pos:
                counters[skips.TRUNCATED_RECORD] += 1
                pos = end
            return pos, row
        incl = rd32(buf, pos + 8, swapped)
        if incl > max_caplen:
            counters[skips.BAD_RECORD_LENGTH] += 1
            state[S_RESYNC] = 1
            pos += 1
            counters[skips.BYTES_SKIPPED] += 1
            continue
        if end - pos - RECORD_HEADER < incl:
            if not final:
                return pos, row
            # Past the end of the input: a cut last record, or a bad length in the
            # middle if a record follows somewhere after this header.
            if _next_record(buf, pos + 1, end, final, swapped, frac_limit, max_caplen,
                            state[S_LAST_SEC])[1]:
                counters[skips.BAD_RECORD_LENGTH] += 1
                state[S_RESYNC] = 1
                pos += 1
                counters[skips.BYTES_SKIPPED] += 1
                continue
            counters[skips.TRUNCATED_RECORD] += 1
            return end, row
        sec = rd32(buf, pos, swapped)
        state[S_RECORD] += 1
        state[S_LAST_SEC] = sec
        cols[C_TS][row] = sec * 1_000_000_000 + rd32(buf, pos + 4, swapped) * frac_scale
        cols[C_WIRELEN][row] = rd32(buf, pos + 12, swapped)
        cols[C_CAPLEN][row] = incl
        cols[C_IFACE][row] = 0
        cols[C_RECORD][row] = state[S_RECORD]
        cols[C_VALID][row] = V_TS | decode_frame(buf, pos + RECORD_HEADER, incl, linktype,
                                                 row, cols)
        row += 1
        pos += RECORD_HEADER + incl
    return pos, row
