"""The link/network/transport header decoder every capture reader shares.

Readers walk their container format in compiled code and call :func:`decode_frame` on
each frame's bytes; it writes one row of :class:`Columns`. Nothing here allocates per
packet: a batch is a set of preallocated numpy arrays plus a validity bitmask per row,
turned into an Arrow record batch without copying by :meth:`Columns.to_arrow`.

Kernels are compiled with ``_nrt=False``: they allocate nothing, and numba's reference
counting on the column tuple otherwise costs more than the decoding itself (about 15x).

Field validity is tracked in groups (one bit each in ``valid``), because a header is
either captured far enough to yield a group of fields or it is not (docs/schema.md).
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
from numba import njit

from netsift import arrays
from netsift.schema import ADDRESS_BYTES, PACKET_SCHEMA

# Link-layer header types (tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_BSD12 = 12  # DLT_RAW on most BSDs
LINKTYPE_RAW_BSD14 = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

SUPPORTED_LINKTYPES = {
    LINKTYPE_NULL: "BSD loopback",
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_RAW_BSD12: "raw IP",
    LINKTYPE_RAW_BSD14: "raw IP",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_LOOP: "OpenBSD loopback",
    LINKTYPE_LINUX_SLL: "Linux cooked (SLL)",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)",
}

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD

# Validity groups: bit set = the group's columns hold values for that row.
V_TS = 1 << 0  # ts
V_L3 = 1 << 1  # src dst ip_version proto ttl ip_len frag_offset more_fragments
V_PORTS = 1 << 2  # sport dport
V_TCP = 1 << 3  # tcp_flags tcp_window
V_ICMP = 1 << 4  # icmp_type icmp_code
V_VLAN = 1 << 5  # vlan
V_VLAN_INNER = 1 << 6  # vlan_inner
V_ETHERTYPE = 1 << 7  # ethertype

COLUMN_GROUP = {
    "ts": V_TS,
    "src": V_L3, "dst": V_L3, "ip_version": V_L3, "proto": V_L3, "ttl": V_L3,
    "ip_len": V_L3, "frag_offset": V_L3, "more_fragments": V_L3,
    "sport": V_PORTS, "dport": V_PORTS,
    "tcp_flags": V_TCP, "tcp_window": V_TCP,
    "icmp_type": V_ICMP, "icmp_code": V_ICMP,
    "vlan": V_VLAN, "vlan_inner": V_VLAN_INNER,
    "ethertype": V_ETHERTYPE,
}

# Indices into the column tuple handed to compiled code (frozen as constants by numba).
C_TS, C_SRC, C_DST, C_IPVER, C_PROTO, C_SPORT, C_DPORT, C_TTL, C_IPLEN = 0, 1, 2, 3, 4, 5, 6, 7, 8
C_WIRELEN, C_CAPLEN, C_FLAGS, C_WINDOW, C_ICMPT, C_ICMPC, C_VLAN, C_VLAN2 = (
    9, 10, 11, 12, 13, 14, 15, 16,
)
C_ETYPE, C_FRAG, C_MF, C_IFACE, C_RECORD, C_VALID = 17, 18, 19, 20, 21, 22

# (column name, numpy dtype) in tuple order; src/dst are (n, 16) byte matrices.
_ARRAY_LAYOUT = (
    ("ts", np.int64), ("src", np.uint8), ("dst", np.uint8), ("ip_version", np.uint8),
    ("proto", np.uint8), ("sport", np.uint16), ("dport", np.uint16), ("ttl", np.uint8),
    ("ip_len", np.uint32), ("wire_len", np.uint32), ("cap_len", np.uint32),
    ("tcp_flags", np.uint16), ("tcp_window", np.uint16), ("icmp_type", np.uint8),
    ("icmp_code", np.uint8), ("vlan", np.uint16), ("vlan_inner", np.uint16),
    ("ethertype", np.uint16), ("frag_offset", np.uint16), ("more_fragments", np.uint8),
    ("interface", np.uint16), ("record", np.int64), ("valid", np.uint16),
)


class Columns:
    """Preallocated arrays for up to ``capacity`` packet rows."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        arrays = []
        for name, dtype in _ARRAY_LAYOUT:
            shape = (capacity, ADDRESS_BYTES) if name in ("src", "dst") else capacity
            arrays.append(np.zeros(shape, dtype=dtype))
        self.arrays = tuple(arrays)
        self._refs = self._refcounts()

    def _refcounts(self) -> list[int]:
        return [sys.getrefcount(a) for a in self.arrays]

    def released(self) -> bool:
        """True when no record batch made by :meth:`to_arrow` still views these arrays.

        Values under nulls then keep whatever an earlier batch left there; Arrow leaves
        them undefined, and Parquet does not store them.
        """
        return self._refcounts() == self._refs

    def to_arrow(self, n: int, source: str) -> pa.RecordBatch:
        """The first ``n`` rows as a record batch of :data:`PACKET_SCHEMA` (zero-copy)."""
        by_name = {name: arr[:n]
                   for (name, _), arr in zip(_ARRAY_LAYOUT, self.arrays, strict=True)}
        valid = by_name["valid"]
        masks: dict[int, pa.Buffer | None] = {}
        for bit in set(COLUMN_GROUP.values()):
            present = (valid & bit) != 0
            masks[bit] = None if present.all() else pa.py_buffer(
                np.packbits(present, bitorder="little"))
        columns = []
        for field in PACKET_SCHEMA:
            name = field.name
            if name == "source":
                columns.append(pa.DictionaryArray.from_arrays(
                    arrays.numeric(np.zeros(n, dtype=np.int32)), arrays.strings([source])))
                continue
            mask = masks.get(COLUMN_GROUP.get(name, 0))
            data = by_name[name]
            if name == "more_fragments":
                data = np.packbits(data.astype(bool), bitorder="little")
            columns.append(pa.Array.from_buffers(
                field.type, n, [mask, pa.py_buffer(np.ascontiguousarray(data))]))
        schema = PACKET_SCHEMA.set(
            PACKET_SCHEMA.get_field_index("source"),
            pa.field("source", pa.dictionary(pa.int32(), pa.string())))
        return pa.RecordBatch.from_arrays(columns, schema=schema)


@njit(inline="always")
def be16(buf, off):
    return (np.int64(buf[off]) << 8) | np.int64(buf[off + 1])


@njit(inline="always")
def be32(buf, off):
    return ((np.int64(buf[off]) << 24) | (np.int64(buf[off + 1]) << 16)
            | (np.int64(buf[off + 2]) << 8) | np.int64(buf[off + 3]))


@njit(inline="always")
def le16(buf, off):
    return np.int64(buf[off]) | (np.int64(buf[off + 1]) << 8)


@njit(inline="always")
def le32(buf, off):
    return (np.int64(buf[off]) | (np.int64(buf[off + 1]) << 8)
            | (np.int64(buf[off + 2]) << 16) | (np.int64(buf[off + 3]) << 24))


@njit(inline="always")
def rd16(buf, off, swapped):
    """Unsigned 16-bit read in the file's byte order (``swapped`` = big-endian file)."""
    return be16(buf, off) if swapped else le16(buf, off)


@njit(inline="always")
def rd32(buf, off, swapped):
    return be32(buf, off) if swapped else le32(buf, off)


@njit(cache=True, nogil=True, _nrt=False)
def linktype_supported(linktype):
    return (linktype == LINKTYPE_ETHERNET or linktype == LINKTYPE_LINUX_SLL
            or linktype == LINKTYPE_LINUX_SLL2 or linktype == LINKTYPE_RAW
            or linktype == LINKTYPE_RAW_BSD12 or linktype == LINKTYPE_RAW_BSD14
            or linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6
            or linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP)


@njit(inline="always")
def _family_ethertype(family):
    # BSD address families: AF_INET is 2 everywhere; AF_INET6 differs per OS.
    if family == 2:
        return ETHERTYPE_IPV4
    if family == 10 or family == 24 or family == 28 or family == 30:
        return ETHERTYPE_IPV6
    return -1


@njit(inline="always")
def _transport(buf, t, tend, proto, row, cols):
    """TCP/UDP ports, TCP flags/window, ICMP type/code from bytes [t, tend)."""
    avail = tend - t
    valid = 0
    if proto == 6:
        if avail >= 4:
            cols[C_SPORT][row] = be16(buf, t)
            cols[C_DPORT][row] = be16(buf, t + 2)
            valid |= V_PORTS
        if avail >= 16:
            cols[C_FLAGS][row] = ((np.int64(buf[t + 12]) & 0x0F) << 8) | np.int64(buf[t + 13])
            cols[C_WINDOW][row] = be16(buf, t + 14)
            valid |= V_TCP
    elif proto == 17:
        if avail >= 4:
            cols[C_SPORT][row] = be16(buf, t)
            cols[C_DPORT][row] = be16(buf, t + 2)
            valid |= V_PORTS
    elif proto == 1 or proto == 58:
        if avail >= 2:
            cols[C_ICMPT][row] = buf[t]
            cols[C_ICMPC][row] = buf[t + 1]
            valid |= V_ICMP
    return valid


@njit(inline="always")
def _ipv4(buf, p, end, row, cols):
    if end - p < 20 or (buf[p] >> 4) != 4:
        return 0
    ihl = (np.int64(buf[p]) & 0x0F) * 4
    if ihl < 20 or end - p < ihl:
        return 0
    total_len = be16(buf, p + 2)
    flags_frag = be16(buf, p + 6)
    proto = np.int64(buf[p + 9])
    src = cols[C_SRC]
    dst = cols[C_DST]
    for k in range(10):
        src[row, k] = 0
        dst[row, k] = 0
    src[row, 10] = 0xFF
    src[row, 11] = 0xFF
    dst[row, 10] = 0xFF
    dst[row, 11] = 0xFF
    for k in range(4):
        src[row, 12 + k] = buf[p + 12 + k]
        dst[row, 12 + k] = buf[p + 16 + k]
    cols[C_IPVER][row] = 4
    cols[C_PROTO][row] = proto
    cols[C_TTL][row] = buf[p + 8]
    cols[C_IPLEN][row] = total_len
    frag_offset = (flags_frag & 0x1FFF) * 8
    cols[C_FRAG][row] = frag_offset
    cols[C_MF][row] = 1 if (flags_frag & 0x2000) else 0
    valid = V_L3
    if frag_offset != 0:
        return valid
    # Bound the transport header by the datagram, not the frame (Ethernet padding).
    # A zero total length is what TCP segmentation offload leaves in local captures.
    if total_len == 0:
        tend = end
    elif total_len < ihl:
        return valid
    else:
        tend = min(end, p + total_len)
    return valid | _transport(buf, p + ihl, tend, proto, row, cols)


@njit(inline="always")
def _jumbo_length(buf, start, stop):
    """The Jumbo Payload option's length in the Hop-by-Hop header at start, or -1."""
    o = start + 2
    while o < stop:
        kind = buf[o]
        if kind == 0:  # Pad1
            o += 1
            continue
        if stop - o < 2:
            break
        length = np.int64(buf[o + 1])
        if kind == 0xC2 and length == 4 and stop - o >= 6:
            return be32(buf, o + 2)
        o += 2 + length
    return -1


@njit(inline="always")
def _ipv6(buf, p, end, row, cols):
    if end - p < 40 or (buf[p] >> 4) != 6:
        return 0
    payload_len = be16(buf, p + 4)
    nxt = np.int64(buf[p + 6])
    src = cols[C_SRC]
    dst = cols[C_DST]
    for k in range(16):
        src[row, k] = buf[p + 8 + k]
        dst[row, k] = buf[p + 24 + k]
    cols[C_IPVER][row] = 6
    cols[C_TTL][row] = buf[p + 7]
    cols[C_IPLEN][row] = payload_len + 40
    q = p + 40
    tend = end if payload_len == 0 else min(end, q + payload_len)
    frag_offset = 0
    more = 0
    complete = True
    # Walk extension headers to the upper-layer protocol (bounded: at most 16 headers).
    for _ in range(16):
        if nxt == 0 or nxt == 43 or nxt == 60 or nxt == 135 or nxt == 139 or nxt == 140:
            if tend - q < 2:
                complete = False
                break
            hdr_len = (np.int64(buf[q + 1]) + 1) * 8
            if nxt == 0 and payload_len == 0 and q == p + 40:
                # RFC 2675: a zero payload length defers to the Jumbo Payload option.
                jumbo = _jumbo_length(buf, q, min(q + hdr_len, tend))
                if jumbo >= 0:
                    cols[C_IPLEN][row] = min(jumbo + 40, 0xFFFFFFFF)
                    tend = min(end, q + jumbo)
            nxt = np.int64(buf[q])
            q += hdr_len
        elif nxt == 44:
            if tend - q < 8:
                complete = False
                break
            off_flags = be16(buf, q + 2)
            frag_offset = off_flags & 0xFFF8
            more = off_flags & 1
            nxt = np.int64(buf[q])
            q += 8
        elif nxt == 51:
            if tend - q < 2:
                complete = False
                break
            hdr_len = (np.int64(buf[q + 1]) + 2) * 4
            nxt = np.int64(buf[q])
            q += hdr_len
        else:
            break
    cols[C_PROTO][row] = nxt
    cols[C_FRAG][row] = frag_offset
    cols[C_MF][row] = more
    valid = V_L3
    if not complete or frag_offset != 0 or q > tend:
        return valid
    return valid | _transport(buf, q, tend, nxt, row, cols)


@njit(inline="always")
def decode_frame(buf, off, caplen, linktype, row, cols):
    """Decode the frame at ``buf[off:off+caplen]`` into row ``row``; return validity bits.

    ``cols[C_TS]``, lengths and provenance are the caller's; this fills the rest.
    """
    end = off + caplen
    p = off
    etype = -1
    valid = 0
    if linktype == LINKTYPE_ETHERNET:
        if caplen >= 14:
            etype = be16(buf, off + 12)
            p = off + 14
    elif linktype == LINKTYPE_LINUX_SLL:
        if caplen >= 16:
            etype = be16(buf, off + 14)
            p = off + 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if caplen >= 20:
            etype = be16(buf, off)
            p = off + 20
    elif (linktype == LINKTYPE_RAW or linktype == LINKTYPE_RAW_BSD12
          or linktype == LINKTYPE_RAW_BSD14):
        if caplen >= 1:
            version = buf[off] >> 4
            if version == 4:
                etype = ETHERTYPE_IPV4
            elif version == 6:
                etype = ETHERTYPE_IPV6
    elif linktype == LINKTYPE_IPV4:
        etype = ETHERTYPE_IPV4
    elif linktype == LINKTYPE_IPV6:
        etype = ETHERTYPE_IPV6
    elif linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        if caplen >= 4:
            if linktype == LINKTYPE_LOOP:
                family = be32(buf, off)
            else:
                # Host byte order of the capturing machine: take whichever reading is small.
                family = le32(buf, off)
                if family > 0xFFFF:
                    family = be32(buf, off)
            etype = _family_ethertype(family)
            p = off + 4
    # 802.1Q / 802.1ad / legacy QinQ tags, outermost first (bounded).
    tags = 0
    while (etype == 0x8100 or etype == 0x88A8 or etype == 0x9100) and tags < 8:
        if end - p < 4:
            etype = -1
            break
        vid = be16(buf, p) & 0x0FFF
        if tags == 0:
            cols[C_VLAN][row] = vid
            valid |= V_VLAN
        elif tags == 1:
            cols[C_VLAN2][row] = vid
            valid |= V_VLAN_INNER
        etype = be16(buf, p + 2)
        p += 4
        tags += 1
    # Below 0x0600 the field is an 802.3 length (Ethernet) or a Linux link-layer
    # protocol code (SLL, e.g. 4 = 802.2 LLC), not an EtherType.
    if etype < 0x0600:
        return valid
    cols[C_ETYPE][row] = etype
    valid |= V_ETHERTYPE
    if etype == ETHERTYPE_IPV4:
        valid |= _ipv4(buf, p, end, row, cols)
    elif etype == ETHERTYPE_IPV6:
        valid |= _ipv6(buf, p, end, row, cols)
    return valid
