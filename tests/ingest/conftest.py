"""Seed captures for the bad-input and fuzz tests: real traffic on the loopback interface.

tcpdump records ``lo`` while curl fetches files from ``python -m http.server`` over IPv4
and IPv6, ping and ``ping -6`` send echo requests and dig queries a closed UDP port (the
kernel answers with ICMP port unreachable). editcap then rewrites the same packets as
pcapng, as nanosecond pcap and with a link type netsift does not decode. Everything is
bounded in time and every process started here is stopped in ``finally``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest

from netsift import read_table

TOOLS = ("tcpdump", "editcap", "curl", "ping", "dig", "gzip", "zstd", "ip")
# Over 128 KiB in all, so a zstd stream of the capture has more than one block and a
# cut one still decodes to packets.
HTTP_FILES = {"small.txt": 1500, "big.bin": 150000}


@dataclass(frozen=True)
class Seeds:
    """Paths of the seed captures, all holding the same packets."""

    pcap: Path  # tcpdump -i lo, microseconds, Ethernet link type
    pcapng: Path  # editcap -F pcapng
    nsec_pcap: Path  # editcap -F nsecpcap
    user0_pcap: Path  # editcap -T user0: relabelled with a link type netsift does not decode
    user0_pcapng: Path
    _tables: dict[str, pa.Table] = field(default_factory=dict, repr=False, compare=False)

    def table(self, name: str) -> pa.Table:
        """The clean read of seed ``name``, made once and shared by the tests."""
        if name not in self._tables:
            self._tables[name] = read_table(getattr(self, name))
        return self._tables[name]


def _unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to capture on lo"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return "missing tools: " + ", ".join(missing) if missing else None


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET6, kind) as sock:
        sock.bind(("::", 0))
        return sock.getsockname()[1]


def _wait_for(check, what: str, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not start")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _run(*argv: str, check: bool = True) -> None:
    done = subprocess.run(argv, capture_output=True, timeout=20)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()}")


def _traffic(http_port: int, closed_port: int) -> None:
    for url in (f"http://127.0.0.1:{http_port}/small.txt",
                f"http://[::1]:{http_port}/big.bin"):
        _run("curl", "-sS", "--max-time", "5", "-o", os.devnull, url)
    for family in ("-4", "-6"):
        target = "127.0.0.1" if family == "-4" else "::1"
        _run("ping", family, "-n", "-c", "2", "-i", "0.2", "-W", "1", target)
        # Nothing listens there: the reply is ICMP port unreachable, and dig fails.
        _run("dig", f"@{target}", "-p", str(closed_port), "+tries=1", "+time=1",
             "netsift.test", check=False)


def make_seeds(out: Path) -> Seeds:
    www = out / "www"
    www.mkdir()
    for name, size in HTTP_FILES.items():
        (www / name).write_bytes(bytes(i * 7 % 251 for i in range(size)))
    http_port, closed_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    pcap = out / "lo.pcap"
    bpf = f"tcp port {http_port} or udp port {closed_port} or icmp or icmp6"
    log = out / "tcpdump.log"
    procs: list[subprocess.Popen] = []
    try:
        with open(log, "wb") as sink:
            # Immediate mode: packets still buffered when tcpdump stops would be lost.
            tcpdump = subprocess.Popen(
                ["tcpdump", "-i", "lo", "-n", "-U", "--immediate-mode", "-w", str(pcap), bpf],
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(tcpdump)
        _wait_for(lambda: b"listening on" in log.read_bytes(), "tcpdump", tcpdump)
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(http_port), "--bind", "::",
             "--directory", str(www)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        procs.append(server)
        _wait_for(lambda: _listening(http_port), "http.server", server)
        _traffic(http_port, closed_port)
    finally:
        for proc in reversed(procs):
            # SIGINT makes tcpdump flush and close its file.
            _stop(proc, signal.SIGINT if proc is procs[0] else signal.SIGTERM)
    seeds = Seeds(pcap=pcap, pcapng=out / "lo.pcapng", nsec_pcap=out / "lo_nsec.pcap",
                  user0_pcap=out / "user0.pcap", user0_pcapng=out / "user0.pcapng")
    _run("editcap", "-F", "pcapng", str(pcap), str(seeds.pcapng))
    _run("editcap", "-F", "nsecpcap", str(pcap), str(seeds.nsec_pcap))
    _run("editcap", "-F", "pcap", "-T", "user0", str(pcap), str(seeds.user0_pcap))
    _run("editcap", "-F", "pcapng", "-T", "user0", str(pcap), str(seeds.user0_pcapng))
    return seeds


@pytest.fixture(scope="session")
def seeds(tmp_path_factory) -> Seeds:
    """Seed captures recorded once per run; skips where lo cannot be captured."""
    reason = _unavailable_reason()
    if reason:
        pytest.skip(f"seed captures unavailable: {reason}")
    return make_seeds(tmp_path_factory.mktemp("seeds"))


def pytest_collection_modifyitems(items) -> None:
    # Capturing on lo needs root, like the namespace captures marked in tests/.
    for item in items:
        if "seeds" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.root)
