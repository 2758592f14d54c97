"""pcapng: a compiled walk over blocks (draft-ietf-opsawg-pcapng).

Reads Section Header Blocks (either byte order, several sections), Interface Description
Blocks (link type, snaplen, ``if_tsresol``, ``if_tsoffset``), Enhanced, Simple and
Obsolete Packet Blocks; other blocks are skipped by their length. A block whose length
fields disagree loses the block boundary; the walk scans forward, 4 bytes at a time, for
the next block whose leading and trailing lengths agree.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netsift.ingest import skips
from netsift.ingest.decode import (
    C_CAPLEN,
    C_IFACE,
    C_RECORD,
    C_TS,
    C_VALID,
    C_WIRELEN,
    V_TS,
    be32,
    decode_frame,
    le32,
    linktype_supported,
    rd16,
    rd32,
)

MAGIC = b"\x0a\x0d\x0d\x0a"
SHB = 0x0A0D0D0A
IDB, OPB, SPB, NRB, ISB, EPB = 1, 2, 3, 4, 5, 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D
# Largest block accepted; the reader's buffer grows to hold one.
MAX_BLOCK = 16 * 1024 * 1024
MAX_INTERFACES = 1024
INT64_MAX = (1 << 63) - 1

# Kernel state slots.
S_RECORD, S_RESYNC, S_SWAPPED, S_IFACES = 0, 1, 2, 3
STATE_SLOTS = 4
# Interface table columns.
I_LINKTYPE, I_SNAPLEN, I_TSMODE, I_TSFACTOR, I_TSOFFSET = 0, 1, 2, 3, 4
TS_MUL, TS_DIV, TS_SHIFT, TS_INVALID = 0, 1, 2, 3


def new_state() -> tuple[np.ndarray, np.ndarray]:
    state = np.zeros(STATE_SLOTS, dtype=np.int64)
    state[S_SWAPPED] = -1  # no section yet
    return state, np.zeros((MAX_INTERFACES, 5), dtype=np.int64)


@njit(inline="always")
def _known_block(btype):
    return (btype == SHB or (1 <= btype <= 10) or btype == 0xBAD or btype == 0x40000BAD)


@njit(inline="always")
def _section_order(buf, pos):
    """Byte order of the SHB at pos: 0 little, 1 big, -1 not a valid SHB."""
    if le32(buf, pos + 8) == BYTE_ORDER_MAGIC:
        return 0
    if be32(buf, pos + 8) == BYTE_ORDER_MAGIC:
        return 1
    return -1


@njit(inline="always")
def _candidate(buf, q, end, final, swapped):
    """0: no block at q; 1: a block; 2: need more bytes to tell."""
    if end - q < 12:
        return 2
    if be32(buf, q) == SHB:
        order = _section_order(buf, q)
        if order < 0:
            return 0
        swapped = order
    elif swapped < 0:
        return 0
    btype = rd32(buf, q, swapped)
    blen = rd32(buf, q + 4, swapped)
    if not _known_block(btype) or blen < 12 or (blen & 3) or blen > MAX_BLOCK:
        return 0
    if end - q < blen:
        return 0 if final else 2
    return 1 if rd32(buf, q + blen - 4, swapped) == blen else 0


@njit(inline="always")
def _next_block(buf, q, end, final, swapped):
    """(offset, found): the first 4-byte step from q where a whole block starts; found
    is False where the bytes run out first."""
    while True:
        verdict = _candidate(buf, q, end, final, swapped)
        if verdict == 1:
            return q, True
        if verdict == 2:
            return q, False
        q += 4


@njit(inline="always")
def _set_tsresol(ifaces, idx, resol):
    if resol & 0x80:
        k = resol & 0x7F
        if k > 62:
            ifaces[idx, I_TSMODE] = TS_INVALID
        else:
            ifaces[idx, I_TSMODE] = TS_SHIFT
            ifaces[idx, I_TSFACTOR] = k
    elif resol <= 9:
        ifaces[idx, I_TSMODE] = TS_MUL
        ifaces[idx, I_TSFACTOR] = 10 ** (9 - resol)
    elif resol <= 18:
        ifaces[idx, I_TSMODE] = TS_DIV
        ifaces[idx, I_TSFACTOR] = 10 ** (resol - 9)
    else:
        ifaces[idx, I_TSMODE] = TS_INVALID


@njit(inline="always")
def _read_idb(buf, body, body_end, swapped, ifaces, idx):
    ifaces[idx, I_LINKTYPE] = rd16(buf, body, swapped)
    ifaces[idx, I_SNAPLEN] = rd32(buf, body + 4, swapped)
    ifaces[idx, I_TSOFFSET] = 0
    _set_tsresol(ifaces, idx, 6)
    o = body + 8
    while body_end - o >= 4:
        code = rd16(buf, o, swapped)
        olen = rd16(buf, o + 2, swapped)
        if code == 0 or o + 4 + olen > body_end:
            break
        if code == 9 and olen >= 1:
            _set_tsresol(ifaces, idx, np.int64(buf[o + 4]))
        elif code == 14 and olen >= 8:
            lo = rd32(buf, o + 4, swapped)
            hi = rd32(buf, o + 8, swapped)
            if swapped:
                lo, hi = hi, lo
            if hi >= 0x80000000:
                hi -= 0x100000000
            if -0x80000000 <= hi < 0x80000000 and abs(hi) < 3:
                ifaces[idx, I_TSOFFSET] = (hi << 32) | lo
            else:
                ifaces[idx, I_TSMODE] = TS_INVALID
        o += 4 + ((olen + 3) & ~3)


@njit(inline="always")
def _timestamp(hi, lo, ifaces, idx):
    """Nanoseconds since the epoch, or -1 when not representable."""
    if hi >= 0x80000000:
        return -1
    raw = (hi << 32) | lo
    mode = ifaces[idx, I_TSMODE]
    factor = ifaces[idx, I_TSFACTOR]
    if mode == TS_MUL:
        if raw > INT64_MAX // factor:
            return -1
        ns = raw * factor
    elif mode == TS_DIV:
        ns = raw // factor
    elif mode == TS_SHIFT:
        secs = raw >> factor
        frac = raw & ((np.int64(1) << factor) - 1)
        if secs > INT64_MAX // 1_000_000_000 - 1:
            return -1
        if factor <= 33:
            frac_ns = (frac * 1_000_000_000) >> factor
        else:
            frac_ns = ((frac >> (factor - 30)) * 1_000_000_000) >> 30
        ns = secs * 1_000_000_000 + frac_ns
    else:
        return -1
    offset = ifaces[idx, I_TSOFFSET]
    if offset != 0:
        if offset > 0 and ns > INT64_MAX - offset * 1_000_000_000:
            return -1
        ns += offset * 1_000_000_000
        if ns < 0:
            return -1
    return ns


@njit(cache=True, nogil=True, _nrt=False)
def walk(buf, pos, end, final, state, ifaces, counters, cols, row, capacity):
    """Decode packet blocks from ``buf[pos:end]`` into rows ``row..capacity``.

    Same contract as :func:`netsift.ingest.pcap.walk`.
    """
    while row < capacity:
        if state[S_RESYNC]:
            q, found = _next_block(buf, pos, end, final, state[S_SWAPPED])
            counters[skips.BYTES_SKIPPED] += q - pos
            pos = q
            if not found:
                if final:
                    counters[skips.BYTES_SKIPPED] += end - pos
                    pos = end
                return pos, row
            state[S_RESYNC] = 0
        if end - pos < 12:
            if final and end > pos:
                counters[skips.TRUNCATED_RECORD] += 1
                pos = end
            return pos, row
        if be32(buf, pos) == SHB:
            order = _section_order(buf, pos)
            if order < 0:
                counters[skips.BAD_BLOCK] += 1
                state[S_RESYNC] = 1
                pos += 4
                counters[skips.BYTES_SKIPPED] += 4
                continue
            state[S_SWAPPED] = order
            state[S_IFACES] = 0
        elif state[S_SWAPPED] < 0:
            counters[skips.NO_SECTION] += 1
            state[S_RESYNC] = 1
            pos += 4
            counters[skips.BYTES_SKIPPED] += 4
            continue
        swapped = state[S_SWAPPED]
        btype = rd32(buf, pos, swapped)
        blen = rd32(buf, pos + 4, swapped)
        if blen < 12 or (blen & 3) or blen > MAX_BLOCK:
            counters[skips.BAD_BLOCK] += 1
            state[S_RESYNC] = 1
            pos += 4
            counters[skips.BYTES_SKIPPED] += 4
            continue
        if end - pos < blen:
            if not final:
                return pos, row
            # Past the end of the input: a cut last block, or a bad length in the
            # middle if a block follows somewhere after this header.
            if _next_block(buf, pos + 4, end, final, swapped)[1]:
                counters[skips.BAD_BLOCK] += 1
                state[S_RESYNC] = 1
                pos += 4
                counters[skips.BYTES_SKIPPED] += 4
                continue
            counters[skips.TRUNCATED_RECORD] += 1
            return end, row
        if rd32(buf, pos + blen - 4, swapped) != blen:
            counters[skips.BAD_BLOCK] += 1
            state[S_RESYNC] = 1
            pos += 4
            counters[skips.BYTES_SKIPPED] += 4
            continue
        body = pos + 8
        body_end = pos + blen - 4
        pos += blen
        if btype == IDB:
            if body_end - body >= 8:
                n_if = state[S_IFACES]
                if n_if < MAX_INTERFACES:
                    _read_idb(buf, body, body_end, swapped, ifaces, n_if)
                state[S_IFACES] = n_if + 1
            else:
                counters[skips.BAD_BLOCK] += 1
            continue
        if btype != EPB and btype != SPB and btype != OPB:
            continue
        # A packet block: it has a record number whether or not it decodes.
        state[S_RECORD] += 1
        if btype == SPB:
            if body_end - body < 4:
                counters[skips.BAD_BLOCK] += 1
                continue
            iface = 0
            orig = rd32(buf, body, swapped)
            data = body + 4
            caplen = min(orig, body_end - data)
            hi = -1
            lo = 0
        else:
            if body_end - body < 20:
                counters[skips.BAD_BLOCK] += 1
                continue
            if btype == EPB:
                iface = rd32(buf, body, swapped)
            else:
                iface = rd16(buf, body, swapped)
            hi = rd32(buf, body + 4, swapped)
            lo = rd32(buf, body + 8, swapped)
            caplen = rd32(buf, body + 12, swapped)
            orig = rd32(buf, body + 16, swapped)
            data = body + 20
            if data + caplen > body_end:
                counters[skips.BAD_BLOCK] += 1
                continue
        if iface >= state[S_IFACES] or iface >= MAX_INTERFACES:
            counters[skips.UNKNOWN_INTERFACE] += 1
            continue
        linktype = ifaces[iface, I_LINKTYPE]
        if not linktype_supported(linktype):
            counters[skips.UNSUPPORTED_LINKTYPE] += 1
            continue
        if btype == SPB:
            snaplen = ifaces[iface, I_SNAPLEN]
            if snaplen > 0 and caplen > snaplen:
                caplen = snaplen
            valid = 0
        else:
            ts = _timestamp(hi, lo, ifaces, iface)
            if ts < 0:
                counters[skips.BAD_TIMESTAMP] += 1
                continue
            cols[C_TS][row] = ts
            valid = V_TS
        cols[C_WIRELEN][row] = orig
        cols[C_CAPLEN][row] = caplen
        cols[C_IFACE][row] = iface
        cols[C_RECORD][row] = state[S_RECORD]
        cols[C_VALID][row] = valid | decode_frame(buf, data, caplen, linktype, row, cols)
        row += 1
    return pos, row
