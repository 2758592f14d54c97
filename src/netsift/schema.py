"""The packet schema: the one place packet column names, types and null rules live.

A packet row describes one captured frame. Units and null rules (docs/schema.md):

- ``ts``: capture time, integer nanoseconds since the Unix epoch, UTC. Null only for
  pcapng Simple Packet Blocks, which carry no timestamp.
- ``src``, ``dst``: IP addresses as 16 bytes; IPv4 is stored IPv4-mapped
  (``::ffff:a.b.c.d``) so both families share one sortable column. Text for people
  comes from :func:`address_to_text`.
- Network-layer columns (``src``, ``dst``, ``ip_version``, ``proto``, ``ttl``,
  ``ip_len``, ``frag_offset``, ``more_fragments``) are null unless a complete IPv4 or
  IPv6 header was captured.
- ``sport``/``dport`` are null unless the packet is TCP or UDP, is the first fragment
  (offset 0) and its first 4 transport bytes were captured. ``tcp_flags``/``tcp_window``
  need the first 16 TCP bytes. ``icmp_type``/``icmp_code`` need 2 ICMP/ICMPv6 bytes.
- ``vlan`` is the outermost 802.1Q/802.1ad VLAN id, ``vlan_inner`` the next one (QinQ);
  null when untagged.
- ``ethertype`` is the network-layer protocol after any VLAN tags, inferred for link
  types without one (raw IP, BSD loopback); null when the link header is truncated or
  carries no EtherType (802.3 length, Linux cooked link-layer codes below 0x0600).
- ``ip_len`` is the IPv4 total length, or IPv6 payload (or jumbo payload) length + 40;
  ``frag_offset`` is in bytes.
- Provenance: ``source`` is the capture path as given, ``record`` the 1-based index of
  the packet record in that file (tshark's ``frame.number``), ``interface`` the pcapng
  interface id (0 for pcap).
"""

from __future__ import annotations

import ipaddress

import pyarrow as pa

ADDRESS_BYTES = 16

# (name, arrow type). Order is the on-disk column order.
PACKET_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("ts", pa.int64()),
    ("src", pa.binary(ADDRESS_BYTES)),
    ("dst", pa.binary(ADDRESS_BYTES)),
    ("ip_version", pa.uint8()),
    ("proto", pa.uint8()),
    ("sport", pa.uint16()),
    ("dport", pa.uint16()),
    ("ttl", pa.uint8()),
    ("ip_len", pa.uint32()),
    ("wire_len", pa.uint32()),
    ("cap_len", pa.uint32()),
    ("tcp_flags", pa.uint16()),
    ("tcp_window", pa.uint16()),
    ("icmp_type", pa.uint8()),
    ("icmp_code", pa.uint8()),
    ("vlan", pa.uint16()),
    ("vlan_inner", pa.uint16()),
    ("ethertype", pa.uint16()),
    ("frag_offset", pa.uint16()),
    ("more_fragments", pa.bool_()),
    ("interface", pa.uint16()),
    ("source", pa.string()),
    ("record", pa.int64()),
)

PACKET_SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype in PACKET_FIELDS])
PACKET_COLUMNS = tuple(name for name, _ in PACKET_FIELDS)

# TCP flag bits as in the TCP header (tshark's tcp.flags, 12 bits).
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = (
    0x001, 0x002, 0x004, 0x008, 0x010, 0x020, 0x040, 0x080,
)

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58

_V4_PREFIX = b"\x00" * 10 + b"\xff\xff"


def address_to_text(raw: bytes | None) -> str | None:
    """Render a 16-byte address column value as text (IPv4-mapped values as dotted quad)."""
    if raw is None:
        return None
    if raw[:12] == _V4_PREFIX:
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


def address_from_text(text: str) -> bytes:
    """Inverse of :func:`address_to_text`."""
    addr = ipaddress.ip_address(text)
    if addr.version == 4:
        return _V4_PREFIX + addr.packed
    return addr.packed
