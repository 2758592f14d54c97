"""``netsift stream`` on real captures as they happen: a live interface and a spool that
tcpdump/dumpcap rotate, in network namespaces the tests create (root only).

Two namespaces joined by a veth pair; ping between them makes bounded traffic. Every
process is started with a timeout or stopped in the fixture's finaliser, and the
namespaces are always deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from frames import assert_same_frames

import netsift
from netsift.features import FeatureSpec, compute_features

pytestmark = pytest.mark.root
WINDOW_NS = 1_000_000_000


class Pair:
    """Namespaces ``a`` (10.203.0.1 on ``veth_a``) and ``b`` (10.203.0.2)."""

    def __init__(self):
        tag = f"{os.getpid() % 100000}"
        self.a, self.b = f"nsft{tag}a", f"nsft{tag}b"
        self.veth_a, self.veth_b = f"nsv{tag}a", f"nsv{tag}b"
        self.ip_a, self.ip_b = "10.203.0.1", "10.203.0.2"
        self.procs: list[subprocess.Popen] = []

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    def up(self) -> None:
        for ns in (self.a, self.b):
            self.ip("netns", "add", ns)
        self.ip("link", "add", self.veth_a, "netns", self.a, "type", "veth", "peer", "name",
                self.veth_b, "netns", self.b)
        for ns, dev, addr in ((self.a, self.veth_a, self.ip_a), (self.b, self.veth_b,
                                                                 self.ip_b)):
            self.ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            self.ip("-n", ns, "link", "set", dev, "up")
            self.ip("-n", ns, "link", "set", "lo", "up")
            # No IPv6 neighbour discovery: the only traffic is the tests' own.
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            f"net.ipv6.conf.{dev}.disable_ipv6=1"], check=True,
                           capture_output=True, timeout=10)

    def spawn(self, ns: str, *argv: str, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)
        self.procs.append(proc)
        return proc

    def ping(self, count: int, interval: float = 0.1) -> None:
        subprocess.run(["ip", "netns", "exec", self.a, "ping", "-n", "-q", "-c", str(count),
                        "-i", str(interval), "-W", "1", self.ip_b], check=True,
                       capture_output=True, timeout=count * interval + 20)

    def down(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.fixture
def pair(request):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "ping", "tcpdump", "dumpcap"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    made = Pair()
    request.addfinalizer(made.down)
    made.up()
    return made


def netsift_stream(pair: Pair, *args: str) -> subprocess.Popen:
    return pair.spawn(pair.a, sys.executable, "-m", "netsift.cli", "stream", *args,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(c) for c in path.read_text().split()]
    except OSError:
        return []


def packets_seen(out: Path) -> int:
    """``netsift_stream_packets_total`` from the job's metrics file (0 before it exists)."""
    time.sleep(1.1)  # the file is rewritten every second
    try:
        lines = (out / "metrics.prom").read_text().splitlines()
    except OSError:
        return 0
    values = dict(line.split() for line in lines if line and not line.startswith("#"))
    return int(float(values.get("netsift_stream_packets_total", 0)))


def features(out: Path) -> pl.DataFrame:
    tables = [pq.read_table(p) for p in sorted((out / "features").glob("part-*.parquet"))]
    return pl.from_arrow(pa.concat_tables(tables)).sort("window_start", "node")


@pytest.mark.parametrize("tool", ["dumpcap", "tcpdump"])
def test_live_interface_windows_appear_and_sigterm_stops(pair, tool, tmp_path):
    out = tmp_path / "out"
    proc = netsift_stream(pair, "--interface", pair.veth_a, "--capture-tool", tool, "--out",
                          str(out), "--window", "1s", "--lateness", "100ms")
    # The capture program runs (as netsift's child) and has opened the interface.
    wait_for(lambda: children(proc.pid) or proc.poll() is not None, f"{tool} to start", 60)
    assert proc.poll() is None, proc.stderr.read().decode()
    # The capture is live once netsift has seen a packet (a started capture program may
    # not have opened the interface yet); only then the 30 pings are counted on.
    for _ in range(40):
        pair.ping(1)
        if packets_seen(out):
            break
    else:
        pytest.fail(f"{tool} captured nothing in 40 pings")
    pair.ping(30)
    wait_for(lambda: list((out / "features").glob("part-*.parquet")), "a closed window", 20)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()

    summary = json.loads(stdout.decode().splitlines()[-1])
    assert summary["packets"] >= 60 and summary["host_windows"] >= 2
    rows = features(out)
    nodes = {netsift.schema.address_to_text(n) for n in rows["node"].to_list()}
    assert {pair.ip_a, pair.ip_b} <= nodes
    # Stopped gracefully: the checkpoint records every emission, and holds the packets
    # of the window still open for the next run.
    state = json.loads((out / "_checkpoint" / "state.json").read_text())
    assert state["emitted"] == summary["emissions"]
    assert state["pending"] is not None


@pytest.mark.parametrize("rotate", ["tcpdump -G 1", "dumpcap -b duration:1"])
def test_spool_rotated_by_capture_tool_equals_batch(pair, rotate, tmp_path):
    spool, out = tmp_path / "spool", tmp_path / "out"
    spool.mkdir()
    if rotate.startswith("tcpdump"):
        capture = ["tcpdump", "-i", pair.veth_a, "-n", "-U", "-Z", "root", "-G", "1", "-w",
                   str(spool / "%s.pcap")]
    else:
        capture = ["dumpcap", "-q", "-i", pair.veth_a, "-b", "duration:1", "-w",
                   str(spool / "ring.pcapng")]
    writer = pair.spawn(pair.a, *capture, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    job = netsift_stream(pair, "--spool", str(spool), "--out", str(out), "--window", "1s",
                         "--lateness", "100ms", "--settle", "2s", "--quiet")
    wait_for(lambda: any(spool.iterdir()) or writer.poll() is not None,
             f"{rotate} to write", 30)
    assert writer.poll() is None, writer.stderr.read().decode()
    pair.ping(40)
    writer.send_signal(signal.SIGTERM)
    writer.wait(timeout=10)
    files = sorted(p for p in spool.iterdir() if not p.name.startswith("."))
    assert len(files) >= 3, files

    state = out / "_checkpoint" / "state.json"

    def all_read() -> bool:
        try:
            return len(json.loads(state.read_text())["files_done"]) == len(files)
        except (OSError, ValueError):
            return False

    wait_for(all_read, "netsift to read every rotated file", 30)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 0, stderr.decode()
    done = subprocess.run([sys.executable, "-m", "netsift.cli", "stream", "--spool",
                           str(spool), "--out", str(out), "--window", "1s", "--lateness",
                           "100ms", "--drain", "--quiet"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()

    # Each rotated file read once, and only once complete: the rows are batch's.
    packets = pa.concat_tables([netsift.read_table(f) for f in files])
    want = pl.from_arrow(compute_features(packets, FeatureSpec(window_ns=WINDOW_NS))) \
        .sort("window_start", "node")
    assert_same_frames(features(out), want)
