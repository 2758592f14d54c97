"""``netsift lab``: a small LAN of network namespaces with normal users and real attackers.

Hosts hang off one Linux bridge in 10.88.0.0/24, each in its own namespace:

- ``server1..S`` 10.88.0.1..: HTTP (``python3 -m http.server``) and DNS (dnsmasq) each;
  the attacks aim at ``server1``.
- ``client1..N`` 10.88.0.11..: web (curl), DNS (dig) and ping of a random server, at
  random, human-like
  intervals: exponential gaps whose mean differs per client (log-uniform between
  ``think_s / 3`` and ``think_s * 4``), so some clients are chatty and some mostly quiet.
- attackers, each active only during its span: an nmap SYN port scan, an nmap ping sweep
  (``--send-ip`` of 10.88.1.0/24, routed via the server so probes leave as IP packets), an
  hping3 SYN flood, an hping3 UDP flood and a slow nmap scan (one probe a second).

Segmentation and receive offloads are off on every link, so frames on the bridge have
the sizes a physical Ethernet would carry (not 64 KiB offload super-frames). tcpdump
records the bridge into ``capture.pcap``; ``labels.json`` names every host and
every attack with its tool, command, time span (epoch seconds, measured around the
tool's run) and ``victims``: the lab hosts the attack is aimed at, whose replies (SYN-ACKs,
resets, ICMP errors) make their own windows unusual while it lasts. Run time is bounded
by ``seconds``; namespaces, bridge and processes are always removed, also on error or
Ctrl-C. Needs root and the tools in :data:`TOOLS`.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from netsift.errors import UsageError

TOOLS = ("ip", "ethtool", "tcpdump", "nmap", "hping3", "curl", "dig", "ping", "dnsmasq")
SUBNET = "10.88.0"
SWEEP_SUBNET = "10.88.1.0/24"
SERVER = f"{SUBNET}.1"
HTTP_PORT, UDP_FLOOD_PORT = 80, 9999
MIN_SECONDS = 40


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    role: str  # server | client | attacker


@dataclass
class Attack:
    kind: str
    attacker: str
    target: str
    tool: str
    command: list[str]
    start: float = 0.0
    end: float = 0.0
    victims: list[str] = field(default_factory=list)


@dataclass
class LabResult:
    capture: Path
    labels: Path
    hosts: list[Host]
    attacks: list[Attack] = field(default_factory=list)


def missing_requirements() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "netsift lab needs root (network namespaces and packet capture)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return ("missing tools: " + ", ".join(missing) +
                " (apt-get install iproute2 tcpdump nmap hping3 curl dnsutils "
                "iputils-ping dnsmasq-base ethtool)")
    return None


class Network:
    """Namespaces on a bridge; everything it starts is stopped by :meth:`close`."""

    def __init__(self, hosts: list[Host]):
        self.tag = f"nl{os.getpid() % 100000}"
        self.bridge = f"{self.tag}br"
        self.hosts = hosts
        self.procs: list[subprocess.Popen] = []
        self._made: list[str] = []

    def ns(self, host: Host) -> str:
        return f"{self.tag}-{host.name}"

    def __enter__(self) -> Network:
        try:
            self._ip("link", "add", self.bridge, "type", "bridge")
            self._made.append("bridge")
            self._ip("link", "set", self.bridge, "up")
            for i, host in enumerate(self.hosts):
                ns, veth = self.ns(host), f"{self.tag}v{i}"
                self._ip("netns", "add", ns)
                self._made.append(ns)
                self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0",
                         "netns", ns)
                self._ip("link", "set", veth, "master", self.bridge, "up")
                self._ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
                self._ip("-n", ns, "link", "set", "eth0", "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
                _offloads_off([veth])
                _offloads_off(["eth0"], ns)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _ip(*args: str) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
        if proc.returncode:
            raise UsageError(f"ip {' '.join(args)}: {proc.stderr.strip()}")

    def exec(self, host: Host, cmd: list[str], **kwargs) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), *cmd]

    def start(self, host: Host | None, cmd: list[str], **kwargs) -> subprocess.Popen:
        full = self.exec(host, cmd) if host else cmd
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(full, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for name in reversed(self._made):
            if name == "bridge":
                subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            else:
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._made.clear()


def _offloads_off(devices: list[str], ns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    for device in devices:
        proc = subprocess.run([*prefix, "ethtool", "-K", device, "tso", "off", "gso", "off",
                               "gro", "off"], capture_output=True, text=True, timeout=20)
        if proc.returncode:
            raise UsageError(f"ethtool -K {device}: {proc.stderr.strip()}")


def plan(seconds: int, clients: int, servers: int = 3
         ) -> tuple[list[Host], list[tuple[float, Attack]]]:
    """Hosts, and attacks with their start offsets (seconds from the lab's start)."""
    hosts = [Host(f"server{i + 1}", f"{SUBNET}.{1 + i}", "server") for i in range(servers)]
    hosts += [Host(f"client{i + 1}", f"{SUBNET}.{11 + i}", "client") for i in range(clients)]
    attackers = {kind: Host(kind, f"{SUBNET}.{66 + i}", "attacker") for i, kind in enumerate(
        ("scanner", "sweeper", "synflood", "udpflood", "slowscan"))}
    hosts += attackers.values()
    flood_s = max(5, seconds // 12)
    slow_ports = max(10, int(seconds * 0.5))
    schedule = [
        (0.15, Attack("syn-scan", attackers["scanner"].address, SERVER, "nmap",
                      ["nmap", "-n", "-Pn", "-sS", "-T4", "-p", "1-2000", SERVER])),
        (0.30, Attack("ping-sweep", attackers["sweeper"].address, SWEEP_SUBNET, "nmap",
                      ["nmap", "-n", "-sn", "--send-ip", "-T4", SWEEP_SUBNET])),
        (0.45, Attack("syn-flood", attackers["synflood"].address, SERVER, "hping3",
                      ["hping3", "-q", "-S", "-p", str(HTTP_PORT), "-i", "u2000",
                       "-c", str(flood_s * 500), SERVER])),
        (0.62, Attack("udp-flood", attackers["udpflood"].address, SERVER, "hping3",
                      ["hping3", "-q", "--udp", "-p", str(UDP_FLOOD_PORT), "-d", "120",
                       "-i", "u2000", "-c", str(flood_s * 500), SERVER])),
        (0.20, Attack("slow-scan", attackers["slowscan"].address, SERVER, "nmap",
                      ["nmap", "-n", "-Pn", "-sS", "--scan-delay", "1s", "--max-retries", "0",
                       "-p", f"1000-{1000 + slow_ports - 1}", SERVER])),
    ]
    for _, attack in schedule:
        if attack.target in {h.address for h in hosts}:
            attack.victims = [attack.target]
    return hosts, schedule


def _client_action(rng: random.Random, servers: list[str]) -> list[str]:
    server = rng.choice(servers)
    pick = rng.random()
    if pick < 0.5:
        page = rng.choice(["", "index.html", "big.bin", "missing.html"])
        return ["curl", "-s", "-o", "/dev/null", "--max-time", "3",
                f"http://{server}:{HTTP_PORT}/{page}"]
    if pick < 0.85:
        name = rng.choice(["intranet", "mail", "files", "printer", "wiki"])
        return ["dig", f"@{server}", "+tries=1", "+time=1", f"{name}.lab.example"]
    return ["ping", "-c", str(rng.randint(1, 3)), "-i", "0.3", "-W", "1", server]


def run_lab(out: Path, *, seconds: int = 150, clients: int = 24, servers: int = 3,
            seed: int = 1, think_s: float = 1.5,
            on_event: Callable[[str], None] | None = None) -> LabResult:
    """Build the LAN, run normal traffic and the attacks for ``seconds``, write the outputs."""
    reason = missing_requirements()
    if reason:
        raise UsageError(reason)
    if seconds < MIN_SECONDS:
        raise UsageError(f"--seconds must be at least {MIN_SECONDS} (attacks need room)")
    say = on_event or (lambda _msg: None)
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    if not 1 <= servers <= 9:
        raise UsageError(f"--servers must be 1 to 9, not {servers}")
    hosts, schedule = plan(seconds, clients, servers)
    by_address = {h.address: h for h in hosts}
    server_addresses = [h.address for h in hosts if h.role == "server"]
    capture = out / "capture.pcap"
    with tempfile.TemporaryDirectory(prefix="netsift-lab-") as webroot, Network(hosts) as net:
        Path(webroot, "index.html").write_text("<html><body>netsift lab</body></html>\n")
        Path(webroot, "big.bin").write_bytes(os.urandom(256 * 1024))
        sweeper = by_address[next(a.attacker for _, a in schedule if a.kind == "ping-sweep")]
        net._ip("-n", net.ns(sweeper), "route", "add", SWEEP_SUBNET, "via", SERVER)
        tcpdump = net.start(None, ["tcpdump", "-i", net.bridge, "-w", str(capture), "-U",
                                   "-s", "262144"], stderr=subprocess.PIPE)
        _wait_for(lambda: capture.exists() and capture.stat().st_size >= 24, 10, "tcpdump")
        for server in (h for h in hosts if h.role == "server"):
            net.start(server, ["python3", "-m", "http.server", str(HTTP_PORT), "--bind",
                               server.address, "-d", webroot])
            net.start(server, ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts",
                               f"--listen-address={server.address}", "--bind-interfaces",
                               "--address=/lab.example/10.88.0.200", "--pid-file="])
        time.sleep(1.0)
        say(f"lab up: {len(hosts)} hosts on {net.bridge}, running {seconds} s")
        started = time.time()
        deadline = started + seconds
        pending = sorted(schedule, key=lambda item: item[0])
        running: list[tuple[Attack, subprocess.Popen]] = []
        mean_gap = {h.name: think_s * math.exp(rng.uniform(math.log(1 / 3), math.log(4)))
                    for h in hosts if h.role == "client"}
        next_action = {name: started + rng.expovariate(1 / gap) for name, gap in mean_gap.items()}
        client_procs: list[subprocess.Popen] = []
        while time.time() < deadline:
            now = time.time()
            while pending and now >= started + pending[0][0] * seconds:
                _, attack = pending.pop(0)
                host = by_address[attack.attacker]
                attack.start = time.time()
                running.append((attack, net.start(host, attack.command)))
                say(f"attack {attack.kind} from {attack.attacker} ({attack.tool})")
            for attack, proc in list(running):
                if proc.poll() is not None:
                    attack.end = time.time()
                    running.remove((attack, proc))
            for host in hosts:
                if host.role == "client" and now >= next_action[host.name]:
                    client_procs.append(net.start(host, _client_action(rng, server_addresses)))
                    next_action[host.name] = now + rng.expovariate(1 / mean_gap[host.name])
            client_procs = [p for p in client_procs if p.poll() is None]
            time.sleep(0.05)
        for attack, proc in running:  # still going at the deadline: stop it, span ends now
            os.killpg(proc.pid, signal.SIGTERM)
            attack.end = time.time()
        time.sleep(1.0)  # let the last replies reach the capture
        os.killpg(tcpdump.pid, signal.SIGTERM)
        tcpdump.wait(timeout=10)
    attacks = [a for _, a in schedule if a.start]
    labels = out / "labels.json"
    labels.write_text(json.dumps({
        "network": f"{SUBNET}.0/24", "seconds": seconds, "seed": seed,
        "started": started, "hosts": [asdict(h) for h in hosts],
        "attacks": [asdict(a) for a in attacks],
    }, indent=1))
    return LabResult(capture, labels, hosts, attacks)


def _wait_for(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise UsageError(f"{what} did not start within {timeout:.0f} s")
        time.sleep(0.05)
