"""Read tshark ``-T json`` and ``-T ek`` exports as packet rows (docs/schema.md).

Archives of packets already dissected by tshark are read into the same columns, with
the same rules, as :mod:`netsift.ingest.decode` gives for the capture they came from.
:class:`Walk` plugs into the reader's byte loop (``CaptureReader._drive``) like the
compiled pcap walkers: it is handed a window of the (decompressed) input, turns every
complete packet object in it into a row and reports how far it got, so memory stays
bounded by one chunk plus the largest packet object (:data:`MAX_PACKET_BYTES`).

Record boundaries:

- ``-T json`` is one array of packet objects. Each object starts with the key
  ``"_index"``, and the bytes ``{ "_index"`` cannot occur inside a JSON string, so a
  packet is everything from one such start to the next: a damaged packet costs itself
  only, and reading resumes at the next start.
- ``-T ek`` is one JSON object per line; ``{"index": ...}`` lines are bulk-load headers.

Field rules (tshark 4.0): the first occurrence of a layer is the outermost header. tshark
writes a repeated layer (two ``ip`` layers in a tunnel) as repeated keys in ``-T json``
and as a list in ``-T ek`` or with ``--no-duplicate-keys``. orjson, like every fast
parser, keeps only the *last* of repeated keys, so a packet whose protocol stack
(``frame.protocols``) repeats a layer we read is parsed again keeping every occurrence.
ICMP errors do not need that: tshark nests the quoted datagram inside the ICMP layer.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import numpy as np
import orjson

from netsift.errors import CaptureError
from netsift.ingest import skips
from netsift.ingest.decode import (
    C_DST,
    C_SRC,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    V_ETHERTYPE,
    V_ICMP,
    V_L3,
    V_PORTS,
    V_TCP,
    V_TS,
    V_VLAN,
    V_VLAN_INNER,
)

FORMAT_JSON = "tshark-json"
FORMAT_EK = "tshark-ek"

# A packet object larger than this is skipped (counted), so one runaway record cannot
# grow the buffer without bound. tshark writes ~3-10 KiB per packet, a few MiB for a
# fully dissected 64 KiB datagram.
MAX_PACKET_BYTES = 64 * 1024 * 1024

_WHITESPACE = b" \t\r\n"
# Without its leading quote: '"' is JSON's most common byte and slows the scan twofold.
_PACKET_KEY = re.compile(rb'_index"')
_EPOCH = re.compile(r"(-?)([0-9]+)(?:\.([0-9]{1,9}))?")
# Bytes a well-formed -T json array holds between packet objects.
_SEPARATORS = b" \t\r\n,[]"
_EK_STARTS = (b'{"index"', b'{"timestamp"', b'{"layers"')
_STARTS = (b'{"_index"', *_EK_STARTS)
# Layers whose values we read: a repeat of one of them in frame.protocols before the
# first ICMP layer means repeated keys at the top level of "layers".
_READ_LAYERS = frozenset(("eth", "sll", "vlan", "ieee8021ad", "ip", "ipv6", "tcp", "udp",
                          "icmp", "icmpv6"))
_ICMP_LAYERS = ("icmp", "icmpv6")
# tshark's encapsulation (frame.encap_type) of each link type the decoder reads -> bytes
# of link header before the first tag or the network header; packets on other links
# are skipped, as the pcap readers skip them.
_LINK_HEADER_BYTES = {
    1: 14,  # Ethernet
    7: 0, 129: 0, 130: 0,  # raw IP, raw IPv4, raw IPv6
    15: 4, 174: 4,  # BSD loopback, OpenBSD loopback
    25: 16, 210: 20,  # Linux cooked SLL, SLL2
}
_TAGS = frozenset(("vlan", "ieee8021ad"))
# frame.protocols tokens of link headers (none for raw IPv4/IPv6) and EtherType fields.
_LINK_TOKENS = frozenset(("eth", "sll", "raw", "null", "ethertype"))
_IPV6_EXTENSIONS = ("hopopts", "routing", "fraghdr", "dstopts")
_V4_PREFIX = b"\x00" * 10 + b"\xff\xff"
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_ADDRESS_CACHE_LIMIT = 1 << 16


def looks_like_json(head: bytes) -> bool:
    """Whether the first bytes of a (decompressed) input can start tshark JSON or EK."""
    return head.lstrip(_WHITESPACE)[:1] in (b"[", b"{")


class _Dialect:
    """Key names of one export format: ``-T json`` nests sub-fields in ``*_tree``
    objects and keeps dotted names; ``-T ek`` flattens them as ``layer_field`` with
    dots turned into underscores and writes flags as JSON booleans."""

    def __init__(self, ek: bool):
        def key(protocol: str, field: str) -> str:
            # EK prefixes the protocol that registered the field, not the enclosing layer.
            if not ek:
                return field
            return protocol.replace(".", "_") + "_" + field.replace(".", "_")

        self.ek = ek
        self.number = key("frame", "frame.number")
        self.epoch = key("frame", "frame.time_epoch")
        self.wire_len = key("frame", "frame.len")
        self.cap_len = key("frame", "frame.cap_len")
        self.interface = key("frame", "frame.interface_id")
        self.protocols = key("frame", "frame.protocols")
        self.encap = key("frame", "frame.encap_type")
        self.eth_type = key("eth", "eth.type")
        self.sll_type = key("sll", "sll.etype")
        self.tag_id = {"vlan": key("vlan", "vlan.id"),
                       "ieee8021ad": key("ieee8021ad", "ieee8021ad.id")}
        # The 802.1ad layer's type field belongs to tshark's ieee8021ah protocol.
        self.tag_type = {"vlan": key("vlan", "vlan.etype"),
                         "ieee8021ad": key("ieee8021ah", "ieee8021ah.etype")}
        self.ip_src = key("ip", "ip.src")
        self.ip_dst = key("ip", "ip.dst")
        self.ip_ttl = key("ip", "ip.ttl")
        self.ip_proto = key("ip", "ip.proto")
        self.ip_len = key("ip", "ip.len")
        self.ip_hdr_len = key("ip", "ip.hdr_len")
        self.ip_frag = key("ip", "ip.frag_offset")
        # ip.flags changed meaning across tshark versions; the MF bit itself did not.
        self.ip_mf_tree = None if ek else "ip.flags_tree"
        self.ip_mf = key("ip", "ip.flags.mf")
        self.ip6_src = key("ipv6", "ipv6.src")
        self.ip6_dst = key("ipv6", "ipv6.dst")
        self.ip6_hlim = key("ipv6", "ipv6.hlim")
        self.ip6_plen = key("ipv6", "ipv6.plen")
        self.ip6_nxt = key("ipv6", "ipv6.nxt")
        # Extension headers are objects inside the ipv6 layer: name -> its next-header key.
        self.ip6_ext = {("ipv6_" if ek else "ipv6.") + ext: key("ipv6." + ext, f"ipv6.{ext}.nxt")
                        for ext in _IPV6_EXTENSIONS}
        self.fraghdr = "ipv6_fraghdr" if ek else "ipv6.fraghdr"
        self.hopopts = "ipv6_hopopts" if ek else "ipv6.hopopts"
        # Options nest one level deeper in -T json (one "ipv6.opt" object per option).
        self.option = None if ek else "ipv6.opt"
        self.jumbo = key("ipv6", "ipv6.opt.jumbo")
        self.frag6_offset = key("ipv6.fraghdr", "ipv6.fraghdr.offset")
        self.frag6_more = key("ipv6.fraghdr", "ipv6.fraghdr.more")
        self.tcp_sport = key("tcp", "tcp.srcport")
        self.tcp_dport = key("tcp", "tcp.dstport")
        self.tcp_flags = key("tcp", "tcp.flags")
        self.tcp_window = key("tcp", "tcp.window_size_value")
        self.udp_sport = key("udp", "udp.srcport")
        self.udp_dport = key("udp", "udp.dstport")
        # IP protocol number -> (layer, type key, code key).
        self.icmp = {1: ("icmp", key("icmp", "icmp.type"), key("icmp", "icmp.code")),
                     58: ("icmpv6", key("icmpv6", "icmpv6.type"), key("icmpv6", "icmpv6.code"))}


_JSON = _Dialect(ek=False)
_EK = _Dialect(ek=True)


def _first(value: Any) -> Any:
    """The outermost occurrence of a layer or field (repeats arrive as a list)."""
    return value[0] if type(value) is list else value


def _flag(value: Any) -> int:
    if value is True or value == "1":
        return 1
    if value is False or value == "0":
        return 0
    raise ValueError(value)


def _keep_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a repeated key becomes a list of its values, first first."""
    obj: dict[str, Any] = {}
    repeated: set[str] = set()
    for key, value in pairs:
        if key not in obj:
            obj[key] = value
        elif key in repeated:
            obj[key].append(value)
        else:
            obj[key] = [obj[key], value]
            repeated.add(key)
    return obj


def _epoch_ns(text: str) -> int:
    """tshark's frame.time_epoch ("1795567100.640601000") as integer nanoseconds, exactly
    (a float has 53 bits: it cannot hold nanoseconds since 1970)."""
    if len(text) > 10 and text[-10] == ".":
        # tshark's own form, 9 decimals: one int() of the digits (isdigit and isascii
        # refuse the signs, spaces and underscores int() would accept).
        digits = text[:-10] + text[-9:]
        if digits.isdigit() and digits.isascii():
            return int(digits)
    match = _EPOCH.fullmatch(text)
    if match is None:
        raise ValueError(text)
    sign, whole, frac = match.groups()
    ns = int(whole) * 1_000_000_000 + int((frac or "").ljust(9, "0"))
    return -ns if sign else ns


class Walk:
    """The ``walk`` for tshark JSON/EK input: see ``CaptureReader._drive``.

    ``stats`` is the reader's :class:`~netsift.ingest.reader.ReadStats`; its ``format``
    is set once the first record identifies the export, and its counters receive the
    skips. Raises :class:`CaptureError` if the input is JSON but not a tshark export.
    """

    def __init__(self, stats):
        self.stats = stats
        self.counters = stats.counters
        self.dialect: _Dialect | None = None
        self._addresses: dict[str, bytes] = {}
        self._rows: list[tuple] = []
        self._oversized = False  # inside an EK line longer than MAX_PACKET_BYTES

    # -- the byte loop's interface ---------------------------------------------------

    def __call__(self, buf: np.ndarray, pos: int, end: int, final: bool,
                 cols: tuple, row: int, capacity: int) -> tuple[int, int]:
        data = memoryview(buf)
        if self.dialect is None:
            pos = self._identify(data, pos, end, final)
            if self.dialect is None:
                return pos, row
        self._rows.clear()
        want = capacity - row
        if self.dialect.ek:
            pos = self._lines(data, pos, end, final, want)
        else:
            pos = self._objects(data, pos, end, final, want)
        if self._rows:
            row = self._store(cols, row)
        return pos, row

    def _identify(self, data: memoryview, pos: int, end: int, final: bool) -> int:
        """Tell -T json from -T ek by the first packet's opening; return bytes consumed."""
        window = bytes(data[pos:min(end, pos + 4096)])
        head = window.lstrip(_WHITESPACE)
        if head[:1] == b"[":
            head = head[1:].lstrip(_WHITESPACE)
        if len(head) < 16 and not final:
            # Wait for more, keeping only what may begin a packet.
            return pos + len(window) - len(head)
        if (head.startswith(b"]") or head.startswith(b"{")
                and head[1:].lstrip(_WHITESPACE).startswith(b'"_index"')):
            self.dialect, self.stats.format = _JSON, FORMAT_JSON
        elif head.startswith(_EK_STARTS):
            self.dialect, self.stats.format = _EK, FORMAT_EK
        elif final and any(s.startswith(head.translate(None, _WHITESPACE)) for s in _STARTS):
            # The input ends (or its decompression failed) before the first packet did.
            if head:
                self.counters[skips.TRUNCATED_RECORD] += 1
            return end
        else:
            raise CaptureError(f"{self.stats.source}: JSON, but not tshark -T json or -T ek "
                               "output (no packet object at the start)")
        return pos

    def _objects(self, data: memoryview, pos: int, end: int, final: bool, want: int) -> int:
        """-T json: parse packet objects from one ``"_index"`` start to the next."""
        start, after = self._next_object(data, pos, end)
        if start < 0:
            return self._junk(data, pos, max(pos, end - 64) if not final else end)
        self._junk(data, pos, start)
        while len(self._rows) < want:
            nxt, after = self._next_object(data, after, end)
            if nxt < 0:
                if not final:
                    if end - start > MAX_PACKET_BYTES:
                        self.counters[skips.BAD_RECORD_LENGTH] += 1
                        self.counters[skips.BYTES_SKIPPED] += end - start
                        return end
                    return start
                self._packet(data, start, end, at_end=True)
                return end
            self._packet(data, start, nxt, at_end=False)
            start = nxt
        return start

    @staticmethod
    def _next_object(data: memoryview, pos: int, end: int) -> tuple[int, int]:
        """Offsets of the ``{`` opening the next packet object in [pos, end) and of the
        end of its ``"_index"`` key; (-1, -1) if there is none."""
        while True:
            hit = _PACKET_KEY.search(data, pos, end)
            if hit is None:
                return -1, -1
            quote = hit.start() - 1
            low = max(pos, quote - 64)
            before = bytes(data[low:quote + 1])
            if before.endswith(b'"') and before[:-1].rstrip(_WHITESPACE).endswith(b"{"):
                return low + len(before[:-1].rstrip(_WHITESPACE)) - 1, hit.end()
            pos = hit.end()

    def _junk(self, data: memoryview, pos: int, end: int) -> int:
        """Count bytes between packets that are not array punctuation; return ``end``."""
        if end > pos:
            junk = bytes(data[pos:end]).translate(None, _SEPARATORS)
            if junk:
                self.counters[skips.BYTES_SKIPPED] += len(junk)
        return end

    def _packet(self, data: memoryview, start: int, stop: int, at_end: bool) -> None:
        tail = bytes(data[max(start, stop - 64):stop])
        stop -= len(tail) - len(tail.rstrip(_SEPARATORS))
        text = data[start:stop]
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            obj = self._recover(text, exc, at_end)
            if obj is None:
                return
        self._add(obj, text)

    def _recover(self, text: memoryview, exc: orjson.JSONDecodeError, at_end: bool):
        """A whole object followed by junk keeps the object; anything else is skipped."""
        if exc.msg.startswith("unexpected content after document"):
            # orjson reports a character offset; the buffer is UTF-8 bytes.
            end = exc.pos if exc.doc.isascii() else len(exc.doc[:exc.pos].encode())
            try:
                obj = orjson.loads(text[:end])
            except orjson.JSONDecodeError:
                obj = None
            if obj is not None:
                self._junk(text, end, len(text))
                return obj
        self.counters[skips.TRUNCATED_RECORD if at_end else skips.MALFORMED_JSON] += 1
        return None

    def _lines(self, data: memoryview, pos: int, end: int, final: bool, want: int) -> int:
        """-T ek: one object per line; index lines carry nothing."""
        lines = bytes(data[pos:end]).split(b"\n")
        last = len(lines) - 1  # the text after the last newline: a whole line only at EOF
        for index, line in enumerate(lines):
            if len(self._rows) >= want:
                return pos
            if index == last and not final:
                if self._oversized or len(line) > MAX_PACKET_BYTES:
                    self.counters[skips.BAD_RECORD_LENGTH] += not self._oversized
                    self.counters[skips.BYTES_SKIPPED] += len(line)
                    self._oversized = True
                    return end
                return pos
            pos += len(line) + (index != last)
            if self._oversized:
                # The rest of a line already counted as too long.
                self._oversized = False
                self.counters[skips.BYTES_SKIPPED] += len(line)
                continue
            if line.startswith(b'{"index"') or not line.strip(_WHITESPACE):
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                at_end = index == last
                self.counters[skips.TRUNCATED_RECORD if at_end else skips.MALFORMED_JSON] += 1
                continue
            self._add(obj, line)
        return pos

    # -- one packet -> one row -------------------------------------------------------

    def _add(self, obj: Any, text: memoryview) -> None:
        d = self.dialect
        try:
            layers = obj["layers"] if d.ek else obj["_source"]["layers"]
            frame = layers["frame"]
            protocols = frame.get(d.protocols)
        except (KeyError, TypeError, AttributeError):
            self.counters[skips.MALFORMED_JSON] += 1
            return
        if type(protocols) is not str:
            self.counters[skips.MISSING_FIELD] += 1
            return
        tokens = protocols.split(":")
        if not d.ek and (_repeats_read_layer(tokens) or _maybe_jumbogram(layers)):
            try:
                layers = json.loads(bytes(text), object_pairs_hook=_keep_repeats)
                layers = layers["_source"]["layers"]
                frame = _first(layers["frame"])
            except (ValueError, KeyError, TypeError, RecursionError):
                self.counters[skips.MALFORMED_JSON] += 1
                return
        try:
            record = int(frame[d.number])
            wire_len = int(frame[d.wire_len])
            cap_len = int(frame[d.cap_len])
            epoch = frame[d.epoch]
            interface = int(frame.get(d.interface, 0))
        except (KeyError, TypeError, ValueError):
            self.counters[skips.MISSING_FIELD] += 1
            return
        if record < 1 or record > _INT64_MAX or (wire_len | cap_len) >> 32 or interface >> 16:
            self.counters[skips.MISSING_FIELD] += 1
            return
        try:
            ts = _epoch_ns(epoch)
        except (TypeError, ValueError, AttributeError):
            ts = None
        if ts is None or not _INT64_MIN <= ts <= _INT64_MAX:
            self.counters[skips.BAD_TIMESTAMP] += 1
            return
        try:
            link_bytes = _LINK_HEADER_BYTES[int(frame[d.encap])]
        except (KeyError, TypeError, ValueError):
            self.counters[skips.UNSUPPORTED_LINKTYPE] += 1
            return
        self._rows.append(self._row(layers, tokens, d, ts, record, wire_len, cap_len,
                                    interface, link_bytes))

    def _row(self, layers: dict, tokens: list[str], d: _Dialect, ts: int, record: int,
             wire_len: int, cap_len: int, interface: int, link_bytes: int) -> tuple:
        """One row in decoder column order (decode._ARRAY_LAYOUT); 0 where not valid."""
        net, tags, ethertype, vlan, vlan_inner, valid = _link(layers, tokens, d)
        src = dst = b""
        ip_version = proto = ttl = ip_len = frag_offset = more = 0
        if net == "ip":
            try:
                ip = _first(layers["ip"])
                src = self._address(ip[d.ip_src], socket.AF_INET)
                dst = self._address(ip[d.ip_dst], socket.AF_INET)
                ttl, proto, ip_len = int(ip[d.ip_ttl]), int(ip[d.ip_proto]), int(ip[d.ip_len])
                frag_offset = int(ip[d.ip_frag]) * 8
                more = _flag(ip[d.ip_mf_tree][d.ip_mf] if d.ip_mf_tree else ip[d.ip_mf])
                # tshark shows addresses of a header whose options the snap length cut;
                # the decoder wants the whole header, options included.
                whole = cap_len >= link_bytes + 4 * tags + int(ip[d.ip_hdr_len])
                if whole and not ((ttl | proto) >> 8 or (ip_len | frag_offset) >> 16):
                    ip_version = 4
            except (KeyError, TypeError, ValueError, OSError, AttributeError):
                pass
        elif net == "ipv6":
            try:
                ip6 = _first(layers["ipv6"])
                src = self._address(ip6[d.ip6_src], socket.AF_INET6)
                dst = self._address(ip6[d.ip6_dst], socket.AF_INET6)
                ttl, proto = int(ip6[d.ip6_hlim]), int(ip6[d.ip6_nxt])
                ip_len = int(ip6[d.ip6_plen]) + 40
                if ip_len == 40 and proto == 0:
                    # RFC 2675: a zero payload length defers to the Jumbo Payload option.
                    jumbo = _jumbo(ip6, d)
                    if jumbo is not None:
                        ip_len = min(jumbo + 40, 0xFFFFFFFF)
                for name, header in ip6.items():
                    nxt = d.ip6_ext.get(name)
                    if nxt is not None:
                        # Extension headers appear in chain order; the last one names
                        # the upper-layer protocol, as the decoder's chain walk does.
                        proto = int(_last(header)[nxt])
                fraghdr = ip6.get(d.fraghdr)
                if fraghdr is not None:
                    fraghdr = _first(fraghdr)
                    frag_offset = int(fraghdr[d.frag6_offset]) * 8
                    more = _flag(fraghdr[d.frag6_more])
                if not ((ttl | proto) >> 8 or ip_len >> 32 or frag_offset >> 16):
                    ip_version = 6
            except (KeyError, TypeError, ValueError, OSError, AttributeError):
                pass
        if not ip_version:
            return (ts, b"", b"", 0, 0, 0, 0, 0, 0, wire_len, cap_len, 0, 0, 0, 0, vlan,
                    vlan_inner, ethertype, 0, 0, interface, record, valid)
        valid |= V_L3
        sport = dport = tcp_flags = tcp_window = icmp_type = icmp_code = 0
        # Transport fields come only from a whole datagram or its first fragment, as in
        # the decoder; tshark's reassembly would put them on the last fragment instead.
        if frag_offset == 0:
            if proto == 6 or proto == 17:
                sport, dport, tcp_flags, tcp_window, bits = _ports(layers, proto, d)
                valid |= bits
            elif proto == 1 or proto == 58:
                icmp_type, icmp_code, bits = _icmp(layers, proto, d)
                valid |= bits
        return (ts, src, dst, ip_version, proto, sport, dport, ttl, ip_len, wire_len,
                cap_len, tcp_flags, tcp_window, icmp_type, icmp_code, vlan, vlan_inner,
                ethertype, frag_offset, more, interface, record, valid)

    def _address(self, text: Any, family: int) -> bytes:
        """16-byte address column value of tshark's text form (cached: hosts repeat)."""
        raw = self._addresses.get(text)
        if raw is None:
            if type(text) is not str:
                raise TypeError(text)
            raw = socket.inet_pton(family, text)
            if family == socket.AF_INET:
                raw = _V4_PREFIX + raw
            if len(self._addresses) >= _ADDRESS_CACHE_LIMIT:
                self._addresses.clear()
            self._addresses[text] = raw
        return raw

    def _store(self, cols: tuple, row: int) -> int:
        """Write the rows gathered by this call into ``cols`` from ``row``; new row."""
        n = len(self._rows)
        by_column = list(zip(*self._rows, strict=True))
        self._rows.clear()
        for index, values in enumerate(by_column):
            target = cols[index]
            if index == C_SRC or index == C_DST:
                blank = bytes(16)
                joined = b"".join(v or blank for v in values)
                target[row:row + n] = np.frombuffer(joined, dtype=np.uint8).reshape(n, 16)
            else:
                target[row:row + n] = np.array(values, dtype=target.dtype)
        return row + n


def _link(layers: dict, tokens: list[str], d: _Dialect
          ) -> tuple[str | None, int, int, int, int, int]:
    """(outer network layer or None, tag count, ethertype, vlan, vlan_inner, validity).

    The network layer counts only when it directly follows the link layer and its
    VLAN tags (tokens such as "eth:ethertype:vlan:ethertype:ip"), as in the decoder: an
    IP packet inside PPPoE or MPLS gets no network columns from either reader.
    """
    net = None
    seen: dict[str, int] = {}
    tags: list[tuple[str, int]] = []
    for token in tokens:
        if token in _LINK_TOKENS:
            continue
        if token in _TAGS:
            nth = seen.get(token, 0)
            seen[token] = nth + 1
            tags.append((token, nth))
            continue
        if token == "ip" or token == "ipv6":
            net = token
        break
    valid = V_TS
    ethertype = vlan = vlan_inner = 0
    try:
        # The type field after the last tag. tshark names an 802.3 length (eth.len) or
        # an SLL protocol code (sll.ltype) differently: no EtherType, as in the decoder.
        if tags:
            token, nth = tags[-1]
            ethertype = int(_nth(layers[token], nth)[d.tag_type[token]], 16)
        elif tokens[0] == "eth":
            ethertype = int(_first(layers["eth"])[d.eth_type], 16)
        elif tokens[0] == "sll":
            ethertype = int(_first(layers["sll"])[d.sll_type], 16)
        elif net is not None:
            # Raw IP and BSD loopback carry no EtherType; the decoder infers it too.
            ethertype = ETHERTYPE_IPV4 if net == "ip" else ETHERTYPE_IPV6
        if 0x0600 <= ethertype <= 0xFFFF:
            valid |= V_ETHERTYPE
        else:
            ethertype = 0
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        ethertype = 0
    for i, (token, nth) in enumerate(tags[:2]):
        try:
            vid = int(_nth(layers[token], nth)[d.tag_id[token]])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            continue
        if not vid >> 12:
            if i == 0:
                vlan, valid = vid, valid | V_VLAN
            else:
                vlan_inner, valid = vid, valid | V_VLAN_INNER
    return net, len(tags), ethertype, vlan, vlan_inner, valid


def _ports(layers: dict, proto: int, d: _Dialect) -> tuple[int, int, int, int, int]:
    """(sport, dport, tcp_flags, tcp_window, validity bits) of the outer TCP/UDP layer."""
    sport = dport = flags = window = valid = 0
    try:
        if proto == 6:
            tcp = _first(layers["tcp"])
            sport, dport = int(tcp[d.tcp_sport]), int(tcp[d.tcp_dport])
            valid = V_PORTS if not (sport | dport) >> 16 else 0
            flags, window = int(tcp[d.tcp_flags], 16), int(tcp[d.tcp_window])
            if not (flags | window) >> 16:
                valid |= V_TCP
        else:
            udp = _first(layers["udp"])
            sport, dport = int(udp[d.udp_sport]), int(udp[d.udp_dport])
            valid = V_PORTS if not (sport | dport) >> 16 else 0
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    if not valid & V_PORTS:
        sport = dport = 0
    if not valid & V_TCP:
        flags = window = 0
    return sport, dport, flags, window, valid


def _icmp(layers: dict, proto: int, d: _Dialect) -> tuple[int, int, int]:
    """(type, code, validity bits) of the outer ICMP (proto 1) or ICMPv6 (58) layer."""
    layer, type_key, code_key = d.icmp[proto]
    try:
        icmp = _first(layers[layer])
        icmp_type, icmp_code = int(icmp[type_key]), int(icmp[code_key])
    except (KeyError, TypeError, ValueError, AttributeError):
        return 0, 0, 0
    if (icmp_type | icmp_code) >> 8:
        return 0, 0, 0
    return icmp_type, icmp_code, V_ICMP


def _maybe_jumbogram(layers: dict) -> bool:
    """Whether a -T json packet may hold the Jumbo Payload option among repeated
    ``ipv6.opt`` keys (an IPv6 payload length of 0)."""
    ip6 = layers.get("ipv6")
    return type(ip6) is dict and ip6.get("ipv6.plen") == "0"


def _jumbo(ip6: dict, d: _Dialect) -> int | None:
    """The Jumbo Payload length in the leading Hop-by-Hop header, or None."""
    hopopts = ip6.get(d.hopopts)
    if hopopts is None:
        return None
    hopopts = _first(hopopts)
    options = [hopopts] if d.option is None else hopopts.get(d.option, ())
    for option in options if type(options) is list else (options,):
        value = option.get(d.jumbo)
        if value is not None:
            return int(_first(value))
    return None


def _nth(value: Any, nth: int) -> dict:
    """The ``nth`` occurrence of a layer that may repeat."""
    if type(value) is list:
        return value[nth]
    if nth:
        raise IndexError(nth)
    return value


def _last(value: Any) -> dict:
    return value[-1] if type(value) is list else value


def _repeats_read_layer(tokens: list[str]) -> bool:
    """Whether a layer we read occurs twice at the top level (ICMP nests what it quotes)."""
    seen = set()
    for token in tokens:
        if token in _READ_LAYERS:
            if token in seen:
                return True
            if token in _ICMP_LAYERS:
                return False
            seen.add(token)
    return False
