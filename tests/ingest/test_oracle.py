"""netsift's capture readers against tshark, packet by packet, on captures real tools made.

For every capture of :func:`netlab.make_captures` each row netsift yields is compared,
field by field, with what tshark dissects from the same packet; a value netsift leaves
null must be one tshark does not report, and the reverse. Expected values are derived
from tshark's output only (never from netsift's), following the outer headers: fields
tshark reports from headers quoted inside ICMP errors, or after fragments, do not count.

Narrow, documented differences (each follows the schema's null rules, docs/schema.md):

- network-layer columns form one group: null unless the whole IPv4/IPv6 header was
  captured, where tshark still shows the leading fields of a cut header;
- ``frag_offset``/``more_fragments`` of an unfragmented IPv6 packet are 0/false (tshark
  has no fragment header to report);
- ``sport``/``dport`` need both ports captured and ``tcp_flags``/``tcp_window`` both
  fields, where tshark may show the first of a cut pair;
- ``proto`` of a jumbogram whose Hop-by-Hop header the snap length cut is not compared:
  tshark drops that header whole, netsift still reads its next-header byte.
"""

from __future__ import annotations

import netlab
import pyarrow as pa
import pytest

from netsift import CaptureReader, address_to_text

PREFS = (
    # Each frame stands alone: no reassembly that moves fields onto another frame.
    "ip.defragment:FALSE", "ipv6.defragment:FALSE", "tcp.desegment_tcp_streams:FALSE",
    "tcp.analyze_sequence_numbers:FALSE", "tcp.try_heuristic_first:FALSE",
    "udp.try_heuristic_first:FALSE",
)
FIELDS = (
    "frame.number", "frame.time_epoch", "frame.len", "frame.cap_len", "frame.interface_id",
    "frame.protocols",
    "eth.type", "sll.etype", "sll.ifindex", "null.family",
    "vlan.id", "vlan.etype", "ieee8021ad.id", "ieee8021ah.etype",
    "ip.version", "ip.hdr_len", "ip.src", "ip.dst", "ip.ttl", "ip.len", "ip.proto",
    "ip.frag_offset", "ip.flags.mf",
    "ipv6.version", "ipv6.src", "ipv6.dst", "ipv6.hlim", "ipv6.plen", "ipv6.nxt",
    "ipv6.opt.jumbo",
    "ipv6.hopopts.nxt", "ipv6.routing.nxt", "ipv6.dstopts.nxt", "ipv6.fraghdr.nxt",
    "ipv6.fraghdr.offset", "ipv6.fraghdr.more",
    "tcp.srcport", "tcp.dstport", "tcp.flags", "tcp.window_size_value",
    "udp.srcport", "udp.dstport",
    "icmp.type", "icmp.code", "icmpv6.type", "icmpv6.code",
)
COMPARED = ("ts", "wire_len", "cap_len", "interface", "ethertype", "vlan", "vlan_inner",
            "src", "dst", "ip_version", "proto", "ttl", "ip_len", "frag_offset",
            "more_fragments", "sport", "dport", "tcp_flags", "tcp_window", "icmp_type",
            "icmp_code")
ETHERTYPE_IPV4, ETHERTYPE_IPV6 = 0x0800, 0x86DD
# BSD address families tshark's null dissector knows (AF_INET; AF_INET6 of the BSDs).
NULL_FAMILIES = {2: ETHERTYPE_IPV4, 24: ETHERTYPE_IPV6, 28: ETHERTYPE_IPV6,
                 30: ETHERTYPE_IPV6}
TAG_PROTOCOLS = {"vlan": ("vlan.id", "vlan.etype"),
                 "ieee8021ad": ("ieee8021ad.id", "ieee8021ah.etype")}
UNCHECKED = object()  # an expected value the oracle cannot give (see expected_row)


def _int(text: str) -> int:
    return int(text, 0)


def _time_ns(text: str) -> int:
    seconds, _, fraction = text.partition(".")
    return int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9])


def expected_row(frame: dict[str, list[str]]) -> dict[str, object]:
    """The packet row tshark's dissection of one frame implies (None = absent)."""
    first = {name: values[0] if values else None for name, values in frame.items()}
    row: dict[str, object] = dict.fromkeys(COMPARED)
    row["ts"] = _time_ns(first["frame.time_epoch"])
    row["wire_len"] = int(first["frame.len"])
    row["cap_len"] = int(first["frame.cap_len"])
    # Classic pcap has no interfaces; netsift calls its one interface 0.
    row["interface"] = int(first["frame.interface_id"] or 0)
    layers = first["frame.protocols"].split(":")

    # Link layer: tags outermost first, then the ethertype after the last tag.
    link = layers[0]
    # SLL2 is the sll dissector too; only its header names the interface index.
    link_len = {"eth": 14, "sll": 20 if first["sll.ifindex"] else 16, "null": 4}.get(link, 0)
    if link in ("eth", "sll"):
        ethertype = first["eth.type"] if link == "eth" else first["sll.etype"]
        ethertype = _int(ethertype) if ethertype else None
    elif link == "raw":
        inner = layers[1] if len(layers) > 1 else ""
        ethertype = {"ip": ETHERTYPE_IPV4, "ipv6": ETHERTYPE_IPV6}.get(inner)
    elif link in ("ip", "ipv6"):  # LINKTYPE_IPV4 / LINKTYPE_IPV6: no link header
        ethertype = ETHERTYPE_IPV4 if link == "ip" else ETHERTYPE_IPV6
    elif link == "null":
        ethertype = NULL_FAMILIES.get(_int(first["null.family"] or "-1"))
    else:
        raise AssertionError(f"frame {first['frame.number']}: link layer {link!r} not covered")
    taken = {name: 0 for name in TAG_PROTOCOLS}
    tags = []
    for layer in layers:
        if layer in ("ip", "ipv6"):
            break
        if layer in TAG_PROTOCOLS:
            id_field, type_field = TAG_PROTOCOLS[layer]
            index = taken[layer]
            taken[layer] += 1
            tags.append(_int(frame[id_field][index]))
            link_len += 4
            types = frame[type_field]
            ethertype = _int(types[index]) if index < len(types) else None
    row["ethertype"] = ethertype
    row["vlan"] = tags[0] if tags else None
    row["vlan_inner"] = tags[1] if len(tags) > 1 else None

    # Network layer: the first IP header after the link layer (never one an ICMP quotes),
    # if all of it was captured; tshark shows what it could read of a cut one.
    net = next((i for i, layer in enumerate(layers) if layer in ("ip", "ipv6")), None)
    captured = row["cap_len"] - link_len
    whole_v4 = (first["ip.version"] == "4" and first["ip.hdr_len"]
                and 20 <= int(first["ip.hdr_len"]) <= captured)
    whole_v6 = first["ipv6.version"] == "6" and captured >= 40
    transport = None
    if net is not None and layers[net] == "ip" and whole_v4:
        row.update(src=first["ip.src"], dst=first["ip.dst"], ip_version=4,
                   proto=int(first["ip.proto"]), ttl=int(first["ip.ttl"]),
                   ip_len=int(first["ip.len"]),
                   frag_offset=int(first["ip.frag_offset"]) * 8,
                   more_fragments=first["ip.flags.mf"] == "1")
        transport = layers[net + 1] if net + 1 < len(layers) else None
    elif net is not None and layers[net] == "ipv6" and whole_v6:
        proto: object = int(first["ipv6.nxt"])
        payload_len = int(first["ipv6.plen"])
        after = net + 1
        seen: dict[str, int] = {}
        # Extension headers of the outer packet come first in tshark's field order.
        while after < len(layers) and layers[after].startswith("ipv6."):
            header = layers[after]
            index = seen.get(header, 0)
            if index >= len(frame[header + ".nxt"]):
                # Cut by the snap length: proto is the last next-header read. tshark
                # drops a cut Hop-by-Hop header of a jumbogram whole (it looks for the
                # length there first); netsift still reads its next-header byte.
                if header == "ipv6.hopopts" and payload_len == 0:
                    proto = UNCHECKED
                break
            seen[header] = index + 1
            proto = int(frame[header + ".nxt"][index])
            after += 1
        fragment = "ipv6.fraghdr" in seen
        if payload_len == 0 and first["ipv6.opt.jumbo"]:
            payload_len = int(first["ipv6.opt.jumbo"])  # RFC 2675 jumbogram
        row.update(src=first["ipv6.src"], dst=first["ipv6.dst"], ip_version=6, proto=proto,
                   ttl=int(first["ipv6.hlim"]), ip_len=payload_len + 40,
                   frag_offset=int(first["ipv6.fraghdr.offset"]) * 8 if fragment else 0,
                   more_fragments=first["ipv6.fraghdr.more"] == "1" if fragment else False)
        transport = layers[after] if after < len(layers) else None

    # Transport: only the protocol right after the outer IP header.
    if transport in ("tcp", "udp"):
        if first[f"{transport}.srcport"] and first[f"{transport}.dstport"]:
            row["sport"] = int(first[f"{transport}.srcport"])
            row["dport"] = int(first[f"{transport}.dstport"])
        if transport == "tcp" and first["tcp.flags"] and first["tcp.window_size_value"]:
            row["tcp_flags"] = _int(first["tcp.flags"])
            row["tcp_window"] = int(first["tcp.window_size_value"])
    elif transport in ("icmp", "icmpv6") and first[f"{transport}.type"]:
        row["icmp_type"] = int(first[f"{transport}.type"])
        row["icmp_code"] = int(first[f"{transport}.code"])
    return row


def actual_rows(table: pa.Table) -> list[dict[str, object]]:
    rows = table.select(["record", *COMPARED]).to_pylist()
    for row in rows:
        row["src"] = address_to_text(row["src"])
        row["dst"] = address_to_text(row["dst"])
    return rows


@pytest.fixture(scope="session")
def oracle(captures):
    """tshark's fields for each capture (cached per uncompressed file)."""
    cache: dict = {}

    def frames(capture: netlab.Capture) -> list[dict[str, list[str]]]:
        if capture.oracle not in cache:
            cache[capture.oracle] = netlab.tshark_fields(capture.oracle, FIELDS, PREFS)
        return cache[capture.oracle]
    return frames


def read(capture: netlab.Capture) -> tuple[pa.Table, CaptureReader]:
    reader = CaptureReader(capture.path)
    batches = list(reader)
    return pa.Table.from_batches(batches), reader


@pytest.mark.root
@pytest.mark.parametrize("name", netlab.CAPTURE_NAMES)
def test_every_packet_matches_tshark(name, captures, oracle):
    capture = captures[name]
    table, reader = read(capture)
    frames = oracle(capture)
    assert reader.stats.skipped == {}, capture.tool
    assert table.num_rows == len(frames) > 0, capture.tool
    assert table.column("record").to_pylist() == [int(f["frame.number"][0]) for f in frames]
    mismatches = []
    for frame, actual in zip(frames, actual_rows(table), strict=True):
        expected = expected_row(frame)
        for column in COMPARED:
            if expected[column] is not UNCHECKED and actual[column] != expected[column]:
                mismatches.append(f"record {actual['record']} ({frame['frame.protocols'][0]}):"
                                  f" {column} netsift={actual[column]!r}"
                                  f" tshark={expected[column]!r}")
    assert not mismatches, f"{capture.tool}: {len(mismatches)} differences\n" + "\n".join(
        mismatches[:40])


# -- the captures hold what the comparison is meant to cover ------------------------------

def some(description, predicate):
    return description, lambda rows: any(predicate(row) for row in rows)


def every(description, predicate):
    return description, lambda rows: all(predicate(row) for row in rows)


def _v4(row):
    return row["ip_version"] == 4


def _v6(row):
    return row["ip_version"] == 6


def _http(row):
    return row["proto"] == 6 and netlab.HTTP_PORT in (row["sport"], row["dport"])


def _icmp(row):
    return row["icmp_type"], row["icmp_code"]


TRAFFIC = [
    some("ARP", lambda r: r["ethertype"] == 0x0806 and r["src"] is None),
    some("HTTP over IPv4", lambda r: _v4(r) and _http(r)),
    some("HTTP over IPv6", lambda r: _v6(r) and _http(r)),
    some("SYN with ECE and CWR", lambda r: r["tcp_flags"] == 0x0C2),
    some("DNS over IPv4", lambda r: _v4(r) and r["proto"] == 17 and r["sport"] == 53),
    some("DNS over IPv6", lambda r: _v6(r) and r["proto"] == 17 and r["sport"] == 53),
    some("echo over IPv4", lambda r: _v4(r) and _icmp(r) == (0, 0)),
    some("echo over IPv6", lambda r: _v6(r) and r["icmp_type"] == 129),
    some("ICMP port unreachable", lambda r: _v4(r) and _icmp(r) == (3, 3)),
    some("ICMPv6 port unreachable", lambda r: _v6(r) and _icmp(r) == (1, 4)),
    some("ICMP time exceeded", lambda r: _v4(r) and r["icmp_type"] == 11),
    some("ICMPv6 time exceeded", lambda r: _v6(r) and r["icmp_type"] == 3),
    some("IPv4 first fragment", lambda r: _v4(r) and r["more_fragments"] and r["frag_offset"] == 0
         and r["icmp_type"] is not None),
    some("IPv4 later fragment", lambda r: _v4(r) and r["frag_offset"] > 0
         and r["icmp_type"] is None),
    some("IPv6 first fragment", lambda r: _v6(r) and r["more_fragments"] and r["frag_offset"] == 0
         and r["proto"] in (17, 58)),
    some("IPv6 later fragment", lambda r: _v6(r) and r["frag_offset"] > 0 and r["proto"] == 58),
    some("UDP after IPv6 extension headers", lambda r: _v6(r) and r["proto"] == 17
         and r["dport"] == netlab.CLOSED_PORT and r["frag_offset"] == 0),
]
JUMBOGRAM = some("IPv6 jumbogram (BIG TCP)", lambda r: _v6(r) and r["wire_len"] > 65535 + 54)
MICROSECONDS = every("microsecond timestamps", lambda r: r["ts"] % 1000 == 0)
NANOSECONDS = some("nanosecond timestamps", lambda r: r["ts"] % 1000 != 0)
TUN = [
    some("raw IPv4 echo reply", lambda r: r["ethertype"] == 0x0800 and r["icmp_type"] == 0),
    some("raw IPv6 echo reply", lambda r: r["ethertype"] == 0x86DD and r["icmp_type"] == 129),
    some("raw TCP SYN", lambda r: r["proto"] == 6 and r["tcp_flags"] == 0x0C2),
    every("untagged", lambda r: r["vlan"] is None),
]
ANY_DEVICE = [
    some("loopback", lambda r: r["src"] == "127.0.0.1"),
    some("raw IP from the TUN", lambda r: r["src"] == netlab.TUN_LOCAL_V4),
]
# libpcap puts the tag back into SLL frames, not into SLL2 ones.
SLL_TAGS = some("802.1Q from the trunk", lambda r: r["vlan"] == netlab.VLAN_ID)
CUT = [
    some("ports without TCP flags", lambda r: r["sport"] is not None and r["tcp_flags"] is None),
    some("IPv6 header cut (network columns null)", lambda r: r["ethertype"] == 0x86DD
         and r["src"] is None),
]
VETH = TRAFFIC + [JUMBOGRAM, every("untagged", lambda r: r["vlan"] is None)]
CONTENT = {
    "ethernet.pcap": VETH + [MICROSECONDS],
    "ethernet.pcapng": VETH + [MICROSECONDS],
    "nano.pcap": VETH + [NANOSECONDS],
    "nano.pcapng": VETH + [NANOSECONDS],
    "snap40.pcap": CUT + [every("snap length 40", lambda r: r["cap_len"] <= 40)],
    "sll2.pcap": TRAFFIC + ANY_DEVICE + [JUMBOGRAM],
    "sll.pcap": TRAFFIC + ANY_DEVICE + [JUMBOGRAM, SLL_TAGS],
    "sll2_snap62.pcap": [
        every("snap length 62", lambda r: r["cap_len"] <= 62),
        some("IPv6 header whole, transport cut", lambda r: _v6(r) and r["proto"] == 6
             and r["sport"] is None)],
    # The trunk helper may fail to mirror the largest frames: no jumbogram check.
    "vlan.pcap": TRAFFIC + [every("802.1Q", lambda r: (r["vlan"], r["vlan_inner"])
                                  == (netlab.VLAN_ID, None))],
    "qinq.pcap": TRAFFIC + [every("802.1ad + 802.1Q", lambda r: (r["vlan"], r["vlan_inner"])
                                  == (netlab.QINQ_OUTER, netlab.QINQ_INNER))],
    "raw.pcap": TUN,
    "null.pcap": TUN,
    "loop.pcap": TUN,
    "raw4.pcap": [every("IPv4 only", _v4)],
    "raw6.pcap": [every("IPv6 only", _v6)],
    "multi.pcapng": TRAFFIC + [
        some(f"interface {i}", lambda r, i=i: r["interface"] == i) for i in range(4)] + [
        every("raw IP on interface 1", lambda r: r["interface"] != 1
              or r["ethertype"] in (0x0800, 0x86DD)),
        every("QinQ on interface 3 only", lambda r: (r["interface"] == 3)
              == (r["vlan"] == netlab.QINQ_OUTER)),
        NANOSECONDS],
}


@pytest.mark.root
@pytest.mark.parametrize("name", sorted(CONTENT))
def test_capture_holds_the_traffic(name, captures):
    table, _ = read(captures[name])
    rows = actual_rows(table)
    missing = [description for description, check in CONTENT[name] if not check(rows)]
    assert not missing, f"{captures[name].tool}: {missing}"


@pytest.mark.root
@pytest.mark.parametrize("name", [n for n in netlab.CAPTURE_NAMES
                                  if n.endswith((".gz", ".zst", ".xz", ".bz2", "_be.pcap",
                                                 "_be.pcapng"))])
def test_converted_capture_reads_like_its_origin(name, captures):
    capture = captures[name]
    assert capture.twin, f"{name} names no origin"
    converted, _ = read(capture)
    origin, _ = read(captures[capture.twin])
    assert converted.num_rows == origin.num_rows > 0
    for column in converted.column_names:
        if column != "source":
            assert converted.column(column).equals(origin.column(column)), column


@pytest.mark.root
def test_sections_keep_their_own_interfaces_and_resolution(captures):
    """A second pcapng section starts its interface ids (and their resolutions) afresh."""
    both, _ = read(captures["sections.pcapng"])
    first, _ = read(captures["multi.pcapng"])
    second, _ = read(captures["ethernet.pcapng"])
    assert both.num_rows == first.num_rows + second.num_rows
    for column in ("ts", "interface", "wire_len", "src"):
        assert both.column(column).to_pylist() == (first.column(column).to_pylist()
                                                   + second.column(column).to_pylist())
    assert both.column("record").to_pylist() == list(range(1, both.num_rows + 1))
