"""Captures made by real tools from real traffic, for tests and benchmarks.

:class:`Lab` builds two network namespaces joined by a veth pair and runs ordinary tools
between them: curl against ``python -m http.server`` (IPv4, IPv6, IPv6 BIG TCP
jumbograms, ECN), dig (answers, and ICMP/ICMPv6 port unreachable from a closed port),
ping and ping -6 (echo, fragments, record route, time exceeded), and UDP with IPv6
extension headers. tcpdump and dumpcap record it. :func:`make_captures` runs this
scenario once and returns every capture by name with the tool that made it; further
formats (BSD/OpenBSD loopback, raw IPv4/IPv6, big-endian, pcapng, concatenated pcapng
sections, compressed) are derived by the converters below without changing packet bytes.

This file also runs as a helper inside a namespace (``python netlab.py MODE ...``): the
kernel here has no 802.1Q module, so a *trunk* helper mirrors every frame of the veth
into TAP devices, once with an 802.1Q tag and once with 802.1ad + 802.1Q tags (captures
there see real frames with real tags); a *tun* helper holds a TUN device open and answers
echo requests routed into it; a *dns* helper answers A queries.

Every command has a timeout and helpers a lifetime; a :class:`Lab` stops its processes
and deletes its namespaces when it closes, on error too. Namespace names carry the
process id, so concurrent runs do not collide. Needs root: :func:`unavailable_reason`
says why a lab cannot run here.
"""

from __future__ import annotations

import bz2
import fcntl
import gzip
import itertools
import lzma
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("ip", "tcpdump", "dumpcap", "editcap", "tshark", "curl", "dig", "ping", "zstd")
_counter = itertools.count()

# Addresses inside the lab's own namespaces (never routed anywhere else).
CLIENT_V4, SERVER_V4 = "10.77.0.1", "10.77.0.2"
CLIENT_V6, SERVER_V6 = "fd77::1", "fd77::2"
TUN_LOCAL_V4, TUN_PEER_V4 = "10.77.9.1", "10.77.9.2"
TUN_LOCAL_V6, TUN_PEER_V6 = "fd77:9::1", "fd77:9::2"
HTTP_PORT, DNS_PORT, CLOSED_PORT = 8000, 53, 9
VLAN_ID, QINQ_OUTER, QINQ_INNER = 100, 200, 300
DNS_ANSWER = "10.77.53.53"
# Networks the server forwards to (nowhere): TTL 1 towards them earns a time exceeded.
BEYOND_NET_V4, BEYOND_NET_V6 = "10.77.5.0/24", "fd77:5::/64"
BEYOND_V4, BEYOND_V6 = "10.77.5.1", "fd77:5::1"
BIG_TCP_BYTES = 196608
BIG_FILE_BYTES = 1 << 20


def unavailable_reason() -> str | None:
    """Why captures cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, packet capture)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return "missing tools: " + ", ".join(missing)
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    probe = f"nsftprobe{os.getpid()}"
    try:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` unavailable ({exc})"
    if made.returncode:
        return f"`ip netns add` failed: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


@dataclass(frozen=True)
class Capture:
    """One capture: the file to read, the file tshark reads, and how it was made."""

    name: str
    path: Path
    oracle: Path  # the same packets uncompressed (tshark reads no xz, bz2)
    tool: str
    twin: str | None = None  # a capture holding exactly the same packets, if any


class Lab:
    """Two namespaces, ``client`` and ``server``, joined by veth ``vc``/``vs``.

    The client also has a TUN device ``tun0`` (routes to 10.77.9.0/24, fd77:9::/64),
    TAP trunks ``vq`` (802.1Q) and ``vqq`` (QinQ) fed by the trunk helper, and an
    STP bridge ``br0`` with port ``vb`` (peer ``vp``) that emits 802.3 LLC BPDUs.
    """

    def __init__(self):
        base = f"nsft{os.getpid()}x{next(_counter)}"
        self.client = base + "c"
        self.server = base + "s"
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self._procs):
            _stop(proc, signal.SIGTERM)
        self._procs.clear()
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._namespaces.clear()

    # -- running things --------------------------------------------------------------

    def run(self, ns: str, *argv: str, timeout: float = 10, check: bool = True
            ) -> subprocess.CompletedProcess:
        cmd = ["ip", "netns", "exec", ns, *argv]
        done = subprocess.run(cmd, capture_output=True, timeout=timeout)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: "
                               f"{done.stderr.decode(errors='replace').strip()}")
        return done

    def spawn(self, ns: str, *argv: str, log: Path | None = None) -> subprocess.Popen:
        out = open(log, "wb") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            if log:
                out.close()
        self._procs.append(proc)
        return proc

    def helper(self, ns: str, log: Path, *args: str) -> subprocess.Popen:
        """Start this file as a helper in ``ns``; return once it prints ``ready``."""
        proc = self.spawn(ns, sys.executable, __file__, *args, log=log)
        _wait_for_text(log, b"ready", proc, what=f"helper {args[0]}")
        return proc

    def record(self, ns: str, argv: list[str], log: Path) -> subprocess.Popen:
        """Start a capture tool; return once it is capturing."""
        proc = self.spawn(ns, *argv, log=log)
        marker = b"listening on" if argv[0] == "tcpdump" else b"Capturing on"
        _wait_for_text(log, marker, proc, what=argv[0])
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """Stop a capture tool the way a person would (SIGINT flushes its output)."""
        _stop(proc, signal.SIGINT)
        self._procs.remove(proc)

    # -- topology --------------------------------------------------------------------

    def build(self) -> None:
        for ns in (self.client, self.server):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True,
                           timeout=10)
            self._namespaces.append(ns)
        c, s = self.client, self.server
        steps = [
            ["ip", "link", "add", "vc", "netns", c, "type", "veth", "peer", "name", "vs",
             "netns", s],
            ["ip", "-n", c, "link", "set", "lo", "up"],
            ["ip", "-n", s, "link", "set", "lo", "up"],
            ["ip", "-n", c, "addr", "add", CLIENT_V4 + "/24", "dev", "vc"],
            ["ip", "-n", s, "addr", "add", SERVER_V4 + "/24", "dev", "vs"],
            ["ip", "-n", c, "addr", "add", CLIENT_V6 + "/64", "dev", "vc", "nodad"],
            ["ip", "-n", s, "addr", "add", SERVER_V6 + "/64", "dev", "vs", "nodad"],
            ["ip", "-n", c, "link", "set", "vc", "up"],
            ["ip", "-n", s, "link", "set", "vs", "up"],
            ["ip", "-n", c, "tuntap", "add", "dev", "tun0", "mode", "tun"],
            ["ip", "-n", c, "addr", "add", TUN_LOCAL_V4 + "/24", "dev", "tun0"],
            ["ip", "-n", c, "addr", "add", TUN_LOCAL_V6 + "/64", "dev", "tun0", "nodad"],
            ["ip", "-n", c, "link", "set", "tun0", "up"],
            ["ip", "-n", c, "link", "add", "br0", "type", "bridge", "stp_state", "1",
             "hello_time", "100", "forward_delay", "200"],
            ["ip", "-n", c, "link", "add", "vb", "type", "veth", "peer", "name", "vp"],
            ["ip", "-n", c, "link", "set", "vb", "master", "br0"],
        ]
        for tap in ("vq", "vqq"):
            steps.append(["ip", "-n", c, "tuntap", "add", "dev", tap, "mode", "tap"])
        steps += [
            ["ip", "-n", c, "route", "add", BEYOND_NET_V4, "via", SERVER_V4],
            ["ip", "-n", c, "route", "add", BEYOND_NET_V6, "via", SERVER_V6],
            ["ip", "-n", s, "route", "add", BEYOND_NET_V4, "dev", "vs"],
            ["ip", "-n", s, "route", "add", BEYOND_NET_V6, "dev", "vs"],
            # IPv6 BIG TCP: segments over 64 KiB leave as jumbograms (RFC 2675).
            ["ip", "-n", c, "link", "set", "vc", "gso_max_size", str(BIG_TCP_BYTES),
             "gro_max_size", str(BIG_TCP_BYTES)],
            ["ip", "-n", s, "link", "set", "vs", "gso_max_size", str(BIG_TCP_BYTES),
             "gro_max_size", str(BIG_TCP_BYTES)],
        ]
        for cmd in steps:
            _check(cmd)
        self.run(s, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        # ECN negotiation sets ECE and CWR in the SYN.
        self.run(c, "sysctl", "-qw", "net.ipv4.tcp_ecn=1")
        # Trunks carry only what the helper writes; keep the kernel's own chatter off them.
        for dev in ("vq", "vqq", "br0", "vb", "vp"):
            self.run(c, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
        for dev in ("vq", "vqq", "vp", "vb", "br0"):
            _check(["ip", "-n", c, "link", "set", dev, "up"])


def _check(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, timeout=10)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.decode().strip()}")


def _stop(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_for_text(log: Path, text: bytes, proc: subprocess.Popen, *, what: str,
                   timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_bytes():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    detail = log.read_bytes().decode(errors="replace")[-500:] if log.exists() else ""
    raise RuntimeError(f"{what} did not start: {detail}")


# -- the standard scenario -------------------------------------------------------------

def _recorders(tmp: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (description of the tool, argv); all record in the client namespace."""
    def tcpdump(name, *args):
        # Immediate mode: packets still in a ring-buffer block when tcpdump stops are lost.
        return ["tcpdump", "-n", "-U", "--immediate-mode", "-B", "32768", *args,
                "-w", str(tmp / name)]
    return {
        "ethernet.pcap": ("tcpdump -i vc (veth, Ethernet)", tcpdump("ethernet.pcap", "-i", "vc")),
        "nano.pcap": ("tcpdump -i vc --time-stamp-precision nano",
                      tcpdump("nano.pcap", "-i", "vc", "--time-stamp-precision", "nano")),
        "snap40.pcap": ("tcpdump -i vc -s 40", tcpdump("snap40.pcap", "-i", "vc", "-s", "40")),
        "sll2.pcap": ("tcpdump -i any (LINUX_SLL2)", tcpdump("sll2.pcap", "-i", "any")),
        "sll.pcap": ("tcpdump -i any -y LINUX_SLL",
                     tcpdump("sll.pcap", "-i", "any", "-y", "LINUX_SLL")),
        "sll2_snap62.pcap": ("tcpdump -i any -s 62",
                             tcpdump("sll2_snap62.pcap", "-i", "any", "-s", "62")),
        "raw.pcap": ("tcpdump -i tun0 (raw IP)", tcpdump("raw.pcap", "-i", "tun0")),
        "vlan.pcap": ("tcpdump -i vq (802.1Q trunk)", tcpdump("vlan.pcap", "-i", "vq")),
        "qinq.pcap": ("tcpdump -i vqq (802.1ad + 802.1Q trunk)",
                      tcpdump("qinq.pcap", "-i", "vqq")),
        "multi.pcapng": ("dumpcap -i vc -i tun0 -i vb -i vqq (Ethernet, raw IP, STP, QinQ)",
                         ["dumpcap", "-q", "-i", "vc", "-i", "tun0", "-i", "vb", "-i", "vqq",
                          "-w", str(tmp / "multi.pcapng")]),
    }


def _traffic(lab: Lab) -> None:
    """The client's side of the scenario: every command bounded by its own timeout."""
    c = lab.client
    # Slow on purpose (a SYN into a TUN nobody answers): run alongside the rest.
    slow = lab.spawn(c, "curl", "-s", "--connect-timeout", "1", "-o", "/dev/null",
                     f"http://{TUN_PEER_V4}:80/")
    steps = [
        ("ping", "-c", "2", "-i", "0.2", "-W", "1", SERVER_V4),
        ("ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", SERVER_V6),
        # Larger than the 1500-byte MTU: IPv4 and IPv6 fragments, both ways.
        ("ping", "-c", "1", "-s", "3000", "-W", "1", SERVER_V4),
        ("ping", "-6", "-c", "1", "-s", "3000", "-W", "1", SERVER_V6),
        ("curl", "-s", "-m", "5", "-o", "/dev/null", f"http://{SERVER_V4}:{HTTP_PORT}/big.bin"),
        ("curl", "-s", "-m", "5", "-o", "/dev/null", f"http://[{SERVER_V6}]:{HTTP_PORT}/"),
        ("curl", "-s", "-m", "5", "-o", "/dev/null",
         f"http://[{SERVER_V6}]:{HTTP_PORT}/big.bin"),
        # IPv4 options (record route) and expired TTLs (ICMP / ICMPv6 time exceeded).
        ("ping", "-R", "-c", "1", "-W", "1", SERVER_V4),
        ("ping", "-t", "1", "-c", "1", "-W", "1", BEYOND_V4),
        ("ping", "-6", "-t", "1", "-c", "1", "-W", "1", BEYOND_V6),
        # IPv6 extension headers set by the kernel on request, one datagram fragmented.
        (sys.executable, __file__, "udp6-options", SERVER_V6, str(CLOSED_PORT)),
        ("dig", "+tries=1", "+time=1", f"@{SERVER_V4}", "host.netsift.test", "A"),
        ("dig", "+tries=1", "+time=1", f"@{SERVER_V6}", "host.netsift.test", "A"),
        # Closed ports: ICMP / ICMPv6 port unreachable quoting the UDP datagram.
        ("dig", "+tries=1", "+time=1", "-p", str(CLOSED_PORT), f"@{SERVER_V4}", "x.test"),
        ("dig", "+tries=1", "+time=1", "-p", str(CLOSED_PORT), f"@{SERVER_V6}", "x.test"),
        # Routed into the TUN device: raw IP on tun0, answered by the tun helper.
        ("ping", "-c", "2", "-i", "0.2", "-W", "1", TUN_PEER_V4),
        ("ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", TUN_PEER_V6),
        ("ping", "-c", "1", "-s", "2000", "-W", "1", TUN_PEER_V4),
        ("bash", "-c", f"echo netsift > /dev/udp/{TUN_PEER_V4}/5353; "
                       f"echo netsift > /dev/udp/{TUN_PEER_V6}/5353"),
        # Loopback (seen by -i any): a refused TCP connection and an ICMP unreachable.
        ("curl", "-s", "-m", "2", "http://127.0.0.1:1/"),
        ("dig", "+tries=1", "+time=1", "-p", str(CLOSED_PORT), "@127.0.0.1", "x.test"),
        # A fresh ARP exchange late in the run, when every recorder is surely capturing
        # (dumpcap on several interfaces may start some of them after its banner).
        ("ip", "neigh", "flush", "dev", "vc"),
        ("ping", "-c", "1", "-W", "1", SERVER_V4),
    ]
    for argv in steps:
        lab.run(c, *argv, timeout=10, check=False)
    slow.wait(timeout=10)


# Every capture make_captures returns, known before any is made (test parametrisation).
CAPTURE_NAMES = (
    "ethernet.pcap", "nano.pcap", "snap40.pcap", "sll2.pcap", "sll.pcap",
    "sll2_snap62.pcap", "raw.pcap", "vlan.pcap", "qinq.pcap", "multi.pcapng",
    "nano.pcapng", "null.pcap", "loop.pcap", "raw4.pcap", "raw6.pcap", "sections.pcapng",
    "ethernet.pcapng", "ethernet_be.pcap", "nano_be.pcap",
    "multi_be.pcapng", "ethernet.pcap.gz", "ethernet.pcap.zst", "ethernet.pcap.xz",
    "multi.pcapng.gz", "multi.pcapng.zst", "multi.pcapng.xz", "multi.pcapng.bz2",
)


def make_captures(out_dir: Path) -> dict[str, Capture]:
    """Run the standard scenario once; return every capture (made and derived) by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / "logs"
    logs.mkdir(exist_ok=True)
    www = out_dir / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text("<html>netsift</html>\n")
    (www / "big.bin").write_bytes(bytes(range(256)) * (BIG_FILE_BYTES // 256))
    recorders = _recorders(out_dir)
    with Lab() as lab:
        lab.build()
        s, c = lab.server, lab.client
        lab.spawn(s, sys.executable, "-m", "http.server", "--bind", "::", str(HTTP_PORT),
                  "-d", str(www), log=logs / "http.log")
        lab.helper(s, logs / "dns.log", "dns", str(DNS_PORT))
        lab.helper(c, logs / "tun.log", "tun", "tun0")
        lab.helper(c, logs / "trunk.log", "trunk", "vc", "vq", "vqq")
        _wait_listening(lab, s, HTTP_PORT)
        running = [lab.record(c, argv, logs / (name + ".log"))
                   for name, (_, argv) in recorders.items()]
        _traffic(lab)
        # dumpcap hands packets over every 250 ms; STP hellos come every second.
        time.sleep(0.5)
        for proc in running:
            lab.stop(proc)
    captures = {name: Capture(name, out_dir / name, out_dir / name, tool)
                for name, (tool, _) in recorders.items()}
    for cap in captures.values():
        if not cap.path.exists() or cap.path.stat().st_size < 32:
            raise RuntimeError(f"{cap.tool} wrote no capture; see {logs}")
    captures |= derive(captures, out_dir)
    assert sorted(captures) == sorted(CAPTURE_NAMES), "CAPTURE_NAMES is out of date"
    return captures


def _wait_listening(lab: Lab, ns: str, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.run(ns, "ss", "-Htln", f"sport = :{port}", check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} in {ns}")


def derive(captures: dict[str, Capture], out_dir: Path) -> dict[str, Capture]:
    """Formats made from the recorded captures by editcap or the converters below."""
    made: dict[str, Capture] = {}

    def add(name, tool, twin=None, oracle=None):
        made[name] = Capture(name, out_dir / name, oracle or out_dir / name, tool, twin)

    def path(name):
        return captures[name].path

    for origin, resolution in (("nano.pcap", "if_tsresol=9"), ("ethernet.pcap", "microseconds")):
        name = origin + "ng"
        subprocess.run(["editcap", "-F", "pcapng", str(path(origin)), str(out_dir / name)],
                       check=True, capture_output=True, timeout=30)
        add(name, f"editcap -F pcapng of {origin} ({resolution})")
    raw_to_null(path("raw.pcap"), out_dir / "null.pcap")
    add("null.pcap", "raw.pcap with a 4-byte BSD AF header per packet")
    raw_to_null(path("raw.pcap"), out_dir / "loop.pcap", openbsd=True)
    add("loop.pcap", "raw.pcap with a 4-byte OpenBSD loopback header")
    for version, linktype in ((4, LINKTYPE_IPV4), (6, LINKTYPE_IPV6)):
        name = f"raw{version}.pcap"
        raw_to_single_family(path("raw.pcap"), out_dir / name, version)
        add(name, f"raw.pcap's IPv{version} packets as link type {linktype}")
    # pcapng allows concatenated sections; each has its own interfaces and resolutions.
    (out_dir / "sections.pcapng").write_bytes(path("multi.pcapng").read_bytes()
                                              + (out_dir / "ethernet.pcapng").read_bytes())
    add("sections.pcapng", "multi.pcapng (ns) and ethernet.pcapng (us) concatenated")
    for origin in ("ethernet.pcap", "nano.pcap"):
        name = origin.replace(".pcap", "_be.pcap")
        pcap_to_big_endian(path(origin), out_dir / name)
        add(name, f"{origin} byte-swapped to big-endian", twin=origin)
    pcapng_to_big_endian(path("multi.pcapng"), out_dir / "multi_be.pcapng")
    add("multi_be.pcapng", "multi.pcapng byte-swapped to big-endian", twin="multi.pcapng")
    for origin, kinds in (("ethernet.pcap", ("gz", "zst", "xz")),
                          ("multi.pcapng", ("gz", "zst", "xz", "bz2"))):
        for kind in kinds:
            name = f"{origin}.{kind}"
            compress(path(origin), out_dir / name, kind)
            add(name, f"{origin} compressed ({kind})", twin=origin, oracle=path(origin))
    return made


def tshark_fields(path: Path, fields: tuple[str, ...], prefs: tuple[str, ...] = (),
                  timeout: float = 60) -> list[dict[str, list[str]]]:
    """tshark's value(s) of each field for every frame of ``path``, in field order.

    A field tshark does not report for a frame maps to an empty list; one it reports
    several times (an IP header quoted in an ICMP error) lists every occurrence.
    """
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=a",
           "-E", "aggregator=,", "-E", "separator=/t"]
    for pref in prefs:
        cmd += ["-o", pref]
    for field in fields:
        cmd += ["-e", field]
    done = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"tshark failed on {path}: {done.stderr.decode().strip()}")
    frames = []
    for line in done.stdout.decode().splitlines():
        values = line.split("\t")
        if len(values) != len(fields):
            raise RuntimeError(f"tshark printed {len(values)} of {len(fields)} fields")
        frames.append({f: v.split(",") if v else []
                       for f, v in zip(fields, values, strict=True)})
    return frames


# -- converters (packet bytes unchanged) -----------------------------------------------

_PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": "usec", b"\x4d\x3c\xb2\xa1": "nsec"}
LINKTYPE_NULL, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 101, 108
LINKTYPE_IPV4, LINKTYPE_IPV6 = 228, 229


def _pcap_records(data: bytes):
    """(header fields, packet bytes) of each record of a little-endian pcap."""
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack_from("<IIII", data, pos)
        yield (sec, frac, incl, orig), data[pos + 16:pos + 16 + incl]
        pos += 16 + incl


def pcap_to_big_endian(src: Path, dst: Path) -> None:
    """Rewrite a little-endian pcap as the same capture in big-endian byte order."""
    data = src.read_bytes()
    if data[:4] not in _PCAP_MAGICS:
        raise ValueError(f"{src}: not a little-endian pcap")
    head = struct.unpack_from("<IHHiIII", data, 0)
    out = [struct.pack(">IHHiIII", *head)]
    for fields, packet in _pcap_records(data):
        out.append(struct.pack(">IIII", *fields) + packet)
    dst.write_bytes(b"".join(out))


def raw_to_null(src: Path, dst: Path, *, openbsd: bool = False) -> None:
    """Turn a raw-IP pcap into BSD loopback (LINKTYPE_NULL, family in host order, IPv6 as
    FreeBSD's 28) or OpenBSD loopback (LINKTYPE_LOOP, network order, IPv6 as 24)."""
    data = src.read_bytes()
    magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack_from(
        "<IHHiIII", data, 0)
    if data[:4] not in _PCAP_MAGICS or linktype != LINKTYPE_RAW:
        raise ValueError(f"{src}: not a little-endian raw-IP pcap")
    new_type = LINKTYPE_LOOP if openbsd else LINKTYPE_NULL
    out = [struct.pack("<IHHiIII", magic, major, minor, zone, sigfigs, snaplen + 4, new_type)]
    for (sec, frac, incl, orig), packet in _pcap_records(data):
        version = packet[0] >> 4 if packet else 0
        family = 2 if version == 4 else (24 if openbsd else 28)
        header = struct.pack(">I" if openbsd else "<I", family)
        out.append(struct.pack("<IIII", sec, frac, incl + 4, orig + 4) + header + packet)
    dst.write_bytes(b"".join(out))


def raw_to_single_family(src: Path, dst: Path, version: int) -> None:
    """Keep a raw-IP pcap's IPv4 (or IPv6) packets under LINKTYPE_IPV4 (or _IPV6)."""
    data = src.read_bytes()
    head = list(struct.unpack_from("<IHHiIII", data, 0))
    if data[:4] not in _PCAP_MAGICS or head[6] != LINKTYPE_RAW:
        raise ValueError(f"{src}: not a little-endian raw-IP pcap")
    head[6] = LINKTYPE_IPV4 if version == 4 else LINKTYPE_IPV6
    out = [struct.pack("<IHHiIII", *head)]
    for fields, packet in _pcap_records(data):
        if packet and packet[0] >> 4 == version:
            out.append(struct.pack("<IIII", *fields) + packet)
    dst.write_bytes(b"".join(out))


# pcapng option value layouts by block type: code -> struct format of each item to swap
# ("" = bytes, left as they are). Options not listed are dropped by the converter.
_SHB, _IDB, _EPB, _ISB, _SPB, _NRB = 0x0A0D0D0A, 1, 6, 5, 3, 4
_COMMENT = {1: ""}
_OPTION_LAYOUT = {
    _SHB: {**_COMMENT, 2: "", 3: "", 4: ""},
    _IDB: {**_COMMENT, 2: "", 3: "", 4: "", 5: "", 6: "", 7: "", 8: "Q", 9: "", 10: "Q",
           11: "", 12: "", 13: "", 14: "q", 15: "", 16: "", 17: "", 18: ""},
    _EPB: {**_COMMENT, 2: "I", 3: "", 4: "Q", 5: "Q", 6: "I", 7: "Q"},
    _ISB: {**_COMMENT, 2: "II", 3: "II", 4: "Q", 5: "Q", 6: "Q", 7: "Q", 8: "Q"},
}


def _swap_options(raw: bytes, btype: int) -> bytes:
    layout = _OPTION_LAYOUT.get(btype, _COMMENT)
    out, pos = [], 0
    while pos + 4 <= len(raw):
        code, length = struct.unpack_from("<HH", raw, pos)
        value = raw[pos + 4:pos + 4 + length]
        pos += 4 + ((length + 3) & ~3)
        if code == 0:
            break
        if code not in layout:
            continue
        fmt = layout[code]
        if fmt:
            value = struct.pack(">" + fmt, *struct.unpack("<" + fmt, value))
        out.append(struct.pack(">HH", code, length) + value + b"\0" * (-length % 4))
    if out:
        out.append(b"\0\0\0\0")
    return b"".join(out)


def pcapng_to_big_endian(src: Path, dst: Path) -> None:
    """Rewrite a little-endian pcapng (one section) as big-endian.

    Every packet block keeps its position and bytes; options whose layout is unknown
    here are dropped rather than guessed at, and NRB and custom blocks are left out.
    """
    data = src.read_bytes()
    out, pos = [], 0
    while pos + 12 <= len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        body = data[pos + 8:pos + blen - 4]
        pos += blen
        if btype == _SHB:
            bom, major, minor, _section_len = struct.unpack_from("<IHHq", body, 0)
            fixed = struct.pack(">IHHq", bom, major, minor, -1)
            opts = body[16:]
        elif btype == _IDB:
            fixed = struct.pack(">HHI", *struct.unpack_from("<HHI", body, 0))
            opts = body[8:]
        elif btype == _EPB:
            iface, hi, lo, caplen, orig = struct.unpack_from("<IIIII", body, 0)
            padded = (caplen + 3) & ~3
            fixed = struct.pack(">IIIII", iface, hi, lo, caplen, orig) + body[20:20 + padded]
            opts = body[20 + padded:]
        elif btype == _ISB:
            fixed = struct.pack(">III", *struct.unpack_from("<III", body, 0))
            opts = body[12:]
        elif btype == _SPB:
            fixed = struct.pack(">I", *struct.unpack_from("<I", body, 0)) + body[4:]
            opts = b""
        else:
            continue
        new_body = fixed + _swap_options(opts, btype)
        length = len(new_body) + 12
        out.append(struct.pack(">II", btype, length) + new_body + struct.pack(">I", length))
    dst.write_bytes(b"".join(out))


def compress(src: Path, dst: Path, kind: str) -> None:
    """gz / xz / bz2 via Python's own codecs, zst via the zstd command-line tool."""
    data = src.read_bytes()
    if kind == "gz":
        dst.write_bytes(gzip.compress(data))
    elif kind == "xz":
        dst.write_bytes(lzma.compress(data))
    elif kind == "bz2":
        dst.write_bytes(bz2.compress(data))
    elif kind == "zst":
        subprocess.run(["zstd", "-q", "-f", "-3", str(src), "-o", str(dst)], check=True,
                       timeout=30)
    else:
        raise ValueError(f"unknown compression {kind!r}")


# -- helpers run inside a namespace (python netlab.py MODE ...) --------------------------

_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_TAP, _IFF_NO_PI = 0x0001, 0x0002, 0x1000
_HELPER_LIFETIME_S = 120  # a helper whose lab forgot it still ends


def _readable(source, deadline: float) -> bool:
    """Wait until ``source`` has data; False once the helper's lifetime is over."""
    while time.monotonic() < deadline:
        if select.select([source], [], [], 1.0)[0]:
            return True
    return False


def _open_tun(name: str, flags: int) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), flags | _IFF_NO_PI))
    return fd


def _checksum_update(checksum: int, old_word: int, new_word: int) -> int:
    """RFC 1624 incremental update of a ones'-complement checksum."""
    total = (~checksum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo_reply(packet: bytes) -> bytes | None:
    """The echo reply to an unfragmented IPv4/IPv6 echo request, else None."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 28 and packet[9] == 1:
        ihl = (packet[0] & 0x0F) * 4
        if struct.unpack_from(">H", packet, 6)[0] & 0x3FFF or packet[ihl] != 8:
            return None
        reply, request_type, reply_type = bytearray(packet), 8, 0
        reply[12:16], reply[16:20] = packet[16:20], packet[12:16]
        icmp = ihl
    elif version == 6 and len(packet) >= 48 and packet[6] == 58 and packet[40] == 128:
        reply, request_type, reply_type = bytearray(packet), 128, 129
        reply[8:24], reply[24:40] = packet[24:40], packet[8:24]
        icmp = 40
    else:
        return None
    # Swapping the addresses keeps IP and pseudo-header sums; only the type word changes.
    reply[icmp] = reply_type
    old = struct.unpack_from(">H", packet, icmp + 2)[0]
    new = _checksum_update(old, (request_type << 8) | reply[icmp + 1],
                           (reply_type << 8) | reply[icmp + 1])
    struct.pack_into(">H", reply, icmp + 2, new)
    return bytes(reply)


def _serve_tun(name: str) -> None:
    fd = _open_tun(name, _IFF_TUN)
    print("ready", flush=True)
    deadline = time.monotonic() + _HELPER_LIFETIME_S
    while _readable(fd, deadline):
        packet = os.read(fd, 65536)
        reply = _echo_reply(packet)
        if reply:
            os.write(fd, reply)


def _vlan_tag(tpid: int, vid: int) -> bytes:
    return struct.pack(">HH", tpid, vid)


def _serve_trunk(iface: str, dot1q_tap: str, qinq_tap: str) -> None:
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sniffer.bind((iface, 0))
    dot1q = _open_tun(dot1q_tap, _IFF_TAP)
    qinq = _open_tun(qinq_tap, _IFF_TAP)
    print("ready", flush=True)
    deadline = time.monotonic() + _HELPER_LIFETIME_S
    while _readable(sniffer, deadline):
        frame = sniffer.recv(1 << 17)
        macs, rest = frame[:12], frame[12:]
        for fd, tags in ((dot1q, _vlan_tag(0x8100, VLAN_ID)),
                         (qinq, _vlan_tag(0x88A8, QINQ_OUTER) + _vlan_tag(0x8100, QINQ_INNER))):
            try:
                os.write(fd, macs + tags + rest)
            except OSError:
                pass  # a mirror drops what the TAP refuses (as a switch port would)


def _serve_dns(port: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    print("ready", flush=True)
    answer_ip = socket.inet_aton(DNS_ANSWER)
    deadline = time.monotonic() + _HELPER_LIFETIME_S
    while _readable(sock, deadline):
        query, peer = sock.recvfrom(4096)
        end = 12
        while end < len(query) and query[end]:
            end += 1 + query[end]
        question = query[12:end + 5]
        if len(query) < 12 or len(question) < 5:
            continue
        header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
        record = struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + answer_ip
        sock.sendto(header + question + record, peer)


def _send_udp6_options(address: str, port: int) -> None:
    """Datagrams carrying Hop-by-Hop and Destination Options headers (PadN only); the
    second is larger than the MTU, so its options travel in the first fragment."""
    pad_option_header = b"\x00\x00\x01\x04\x00\x00\x00\x00"
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, pad_option_header)
        sock.sendto(b"netsift", (address, port))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, pad_option_header)
        sock.sendto(b"n" * 3000, (address, port))


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if mode == "tun":
        _serve_tun(args[0])
    elif mode == "trunk":
        _serve_trunk(*args)
    elif mode == "dns":
        _serve_dns(int(args[0]))
    elif mode == "udp6-options":
        _send_udp6_options(args[0], int(args[1]))
    else:
        sys.exit(f"unknown helper mode {mode!r}")
