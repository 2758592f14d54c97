"""Benchmark capture ingest: netsift against tshark, dpkt and nfstream on one capture.

    python bench/ingest.py                      # 5 M packets; peers that are slow: first 200 k
    python bench/ingest.py --quick              # 300 k packets, 20 k for slow peers
    python bench/ingest.py --packets 20000000 --json bench/out/ingest.json
    python bench/ingest.py --quick --profile    # also: where netsift's reader spends its time

The capture is real traffic replayed. A *seed* capture is recorded once with real tools
(tcpdump on the loopback of a private network namespace while curl fetches files from
``python -m http.server`` over IPv4 and IPv6, ping and ping -6, dig queries a closed port,
nmap runs a connect scan and a SYN scan). The namespace's loopback has MTU 1500 and no
segmentation offload, so frames have Ethernet sizes rather than 64 KiB GSO super-frames.
The seed's records are then tiled to the requested count by vectorised numpy code:

* timestamps: the copies share one hour from 2026-01-01T00:00:00Z in equal slices, and
  within its slice a copy keeps the seed's own timing (stretched to fit), bursts and all;
* IPv4 and IPv6 addresses are rewritten per (copy of the seed, conversation): clients
  spread over 10.1.0.0/16 (fd6e:7473::10.1.x.y for IPv6), servers over 10.2.0.0/22, so
  the capture holds tens of thousands of hosts. A conversation is one TCP/UDP port pair
  or ICMP echo id; each nmap scan is one conversation, so a scan stays one scanner;
* the client's (ephemeral) TCP/UDP port is redrawn per copy and connection;
* the IPv4 header checksum is recomputed (incrementally, from the seed's sum of the
  unchanged header words); TCP/UDP/ICMP checksums are left as captured, so they no longer
  match the pseudo-header. tshark does not check them by default and no tool here reads
  them; on loopback they were never final anyway (checksum offload).

Built captures are cached in ``bench/data/`` under names that carry the seed's digest and
the packet count. Every tool reads the same file from the page cache. Tools that manage
far less than a million packets per second (tshark, dpkt) read a prefix of the capture
(``--peer-packets``), and their rate is packets of that prefix per second. tshark's
start-up (measured on an empty capture with the same arguments) is subtracted from its
times, which favours tshark. nfstream runs with one meter, no statistics and no nDPI
dissection (the cheapest setting, as netsift decodes headers only).

Every run is timed in wall seconds and CPU seconds (this process and reaped children).
Targets are judged per core, on packets per CPU-second, which a busy machine disturbs
far less than wall time; both are printed. netsift's runs are short, so the median of
three counts; peers run once unless ``--repeat`` says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA,
    Measurement,
    atomic_path,
    command_version,
    format_table,
    machine,
    measure,
    stream_command,
    verdict,
    warm_page_cache,
    write_json,
)

SEED_VERSION = 1  # bump when the seed scenario changes
BUILD_VERSION = 2  # bump when the replay changes; both are part of cache keys
START_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z
SPAN_NS = 3600 * 1_000_000_000
CHUNK_PACKETS = 500_000
CLIENT_NET = 0x0A010000  # 10.1.0.0/16
SERVER_NET = 0x0A020000  # 10.2.0.0/22
SERVER_HOSTS = 1024
V6_PREFIX = bytes.fromhex("fd6e7473000000000000000000")[:12]  # fd6e:7473::/96
PCAP_LE_USEC = b"\xd4\xc3\xb2\xa1"
LINKTYPE_ETHERNET = 1

TARGET_ARROW_PER_CORE = 5_000_000
TARGET_VS_TSHARK_JSON = 100.0
TARGET_PARQUET_VS_JSON_ZSTD = 0.1

TSHARK_FIELDS = (
    "frame.time_epoch", "frame.len", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst",
    "ip.proto", "ip.ttl", "ip.len", "tcp.srcport", "tcp.dstport", "udp.srcport",
    "udp.dstport", "tcp.flags", "tcp.window_size_value", "icmp.type", "icmp.code",
)


# -- seed capture: real tools on a private loopback ---------------------------------------

class _Namespace:
    """A network namespace with only ``lo`` (MTU 1500, no GSO), torn down on exit."""

    def __init__(self):
        self.name = f"nsftbench{os.getpid()}"
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> _Namespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True,
                       timeout=10)
        try:
            # One segment per skb: tcpdump on lo otherwise sees 64 KiB super-frames.
            for args in (["mtu", "1500"], ["gso_max_size", "1500"], ["gso_max_segs", "1"],
                         ["up"]):
                subprocess.run(["ip", "-n", self.name, "link", "set", "lo", *args],
                               check=True, capture_output=True, timeout=10)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._procs.clear()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)

    def run(self, *argv: str, timeout: float = 60, check: bool = True) -> None:
        done = subprocess.run(["ip", "netns", "exec", self.name, *argv],
                              capture_output=True, timeout=timeout)
        if check and done.returncode:
            raise RuntimeError(f"{argv[0]} exited {done.returncode}: "
                               f"{done.stderr.decode(errors='replace').strip()[-300:]}")

    def spawn(self, *argv: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr)
        self._procs.append(proc)
        return proc


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def make_seed(path: Path) -> dict:
    """Record the seed scenario into ``path``; return its description (phases, tools)."""
    for tool in ("ip", "tcpdump", "curl", "ping", "dig", "nmap"):
        if shutil.which(tool) is None:
            raise SystemExit(f"making the seed capture needs `{tool}`")
    if os.geteuid() != 0:
        raise SystemExit("making the seed capture needs root (network namespace, tcpdump); "
                         "or pass --seed CAPTURE")
    phases: list[tuple[str, float]] = []
    rng = np.random.default_rng(SEED_VERSION)
    with _Namespace() as ns, tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        files = {"index.html": 1_200, "page.html": 14_000, "data.json": 42_000,
                 "photo.jpg": 160_000}
        for name, size in files.items():
            (site / name).write_bytes(rng.integers(32, 127, size, dtype=np.uint8).tobytes())
        for port, bind in ((8000, "127.0.0.1"), (8001, "::1")):
            ns.spawn(sys.executable, "-m", "http.server", str(port), "--bind", bind,
                     "--directory", str(site))
        for url in ("http://127.0.0.1:8000/", "http://[::1]:8001/"):
            _wait_for(lambda url=url: subprocess.run(
                ["ip", "netns", "exec", ns.name, "curl", "-sf", "-o", "/dev/null", url],
                capture_output=True, timeout=10).returncode == 0, f"http server at {url}")
        raw = Path(tmp) / "seed.pcap"
        log = Path(tmp) / "tcpdump.log"
        with open(log, "wb") as log_handle:
            # No -U / --immediate-mode: with them libpcap's ring drops nmap's bursts.
            capture = ns.spawn("tcpdump", "-i", "lo", "-n", "-s", "0", "-B", "16384", "-w",
                               str(raw), stderr=log_handle)
        _wait_for(lambda: b"listening on" in log.read_bytes(), "tcpdump to start")

        def phase(name: str) -> None:
            phases.append((name, time.time()))

        phase("http")
        names = list(files)
        for i in range(24):
            host = "[::1]:8001" if i % 3 == 2 else "127.0.0.1:8000"
            ns.run("curl", "-sf", "-o", "/dev/null", f"http://{host}/{names[i % len(names)]}")
        # One client fetching several files in a row (HTTP/1.0: a connection each).
        ns.run("curl", "-sf", *[f"http://127.0.0.1:8000/{n}" for n in names],
               "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null")
        phase("ping")
        ns.run("ping", "-n", "-c", "40", "-i", "0.01", "127.0.0.1")
        ns.run("ping", "-6", "-n", "-c", "20", "-i", "0.01", "::1")
        phase("dns")
        for _ in range(6):
            ns.run("dig", "@127.0.0.1", "-p", "5353", "+tries=1", "+timeout=1",
                   "example.com", "A", check=False)
        phase("scan-connect")
        ns.run("nmap", "-n", "-Pn", "-sT", "-T4", "-p", "1-300,8000", "127.0.0.1")
        phase("scan-syn")
        ns.run("nmap", "-n", "-Pn", "-sS", "-T4", "-p", "1-300,8001", "127.0.0.1")
        phase("end")
        # libpcap hands packets over in ring blocks retired after up to 1 s; a block
        # still open at SIGINT is lost.
        time.sleep(1.5)
        capture.send_signal(signal.SIGINT)
        capture.wait(timeout=10)
        stats = log.read_text(errors="replace")
        if "\n0 packets dropped by kernel" not in stats:
            raise RuntimeError(f"tcpdump dropped packets; try again:\n{stats}")
        seed_pcap = raw.read_bytes()
    info = {
        "seed_version": SEED_VERSION,
        "phases": phases,
        "tools": {tool: command_version(argv) for tool, argv in (
            ("tcpdump", ["tcpdump", "--version"]), ("curl", ["curl", "--version"]),
            ("nmap", ["nmap", "--version"]), ("dig", ["dig", "-v"]),
            ("ping", ["ping", "-V"]))},
    }
    # The description first: the capture's presence is what marks the seed as made.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    with atomic_path(path) as out:
        out.write_bytes(seed_pcap)
    return info


# -- replay: the seed tiled into a large capture, vectorised ------------------------------

@dataclass
class Seed:
    """The seed's records and, per record, what the replay rewrites."""

    header: bytes  # pcap global header
    records: np.ndarray  # uint8: every record (16-byte header + frame), back to back
    offsets: np.ndarray  # int64: start of each record in ``records``
    when: np.ndarray  # float64: capture time as a fraction of the seed's duration, [0, 1)
    l3: np.ndarray  # int64: offset of the IP header within the frame, -1 if not IP
    version: np.ndarray  # uint8: 4, 6 or 0
    partial_sum: np.ndarray  # int64: IPv4 header words except checksum and addresses
    direction: np.ndarray  # uint8: 0 client -> server, 1 server -> client
    conversation: np.ndarray  # int64: conversation number, 0..conversations-1
    port_at: np.ndarray  # int64: offset of the client's TCP/UDP port in the frame, or -1
    port: np.ndarray  # int64: that port as captured
    conversations: int
    digest: str

    @property
    def count(self) -> int:
        return len(self.offsets)

    def prefix_bytes(self, packets: int) -> int:
        """Bytes after the global header taken by the first ``packets`` of the replay."""
        tiles, rest = divmod(packets, self.count)
        return tiles * len(self.records) + int(self.offsets[rest] if rest else 0)


@dataclass
class _Frame:
    l3: int = -1
    version: int = 0
    partial_sum: int = 0
    direction: int = 0
    key: tuple = ("other",)
    port_at: int = -1
    port: int = 0


def parse_seed(path: Path, phases: list[tuple[str, float]] | None) -> Seed:
    raw = path.read_bytes()
    if raw[:4] != PCAP_LE_USEC:
        raise SystemExit(f"{path}: the seed must be a little-endian microsecond pcap")
    if struct.unpack_from("<I", raw, 20)[0] & 0xFFFF != LINKTYPE_ETHERNET:
        raise SystemExit(f"{path}: the seed must have Ethernet link type")
    phase_starts = [(t, name) for name, t in (phases or [])]
    offsets, times, frames = [], [], []
    names: dict[tuple, int] = {}
    pos = 24
    while pos + 16 <= len(raw):
        sec, usec, incl, _ = struct.unpack_from("<IIII", raw, pos)
        if pos + 16 + incl > len(raw):
            break
        offsets.append(pos - 24)
        times.append(sec * 1_000_000 + usec)
        phase = ""
        for start, name in phase_starts:
            if sec + usec / 1e6 >= start:
                phase = name
        frames.append(_classify(raw[pos + 16:pos + 16 + incl], phase))
        pos += 16 + incl
    if not offsets:
        raise SystemExit(f"{path}: no packets in the seed capture")
    micros = np.array(times, dtype=np.int64)
    micros -= micros.min()
    # One mean gap after the last packet, so consecutive copies do not touch.
    span = micros.max() + max(1, micros.max() // len(micros))

    def column(name: str, dtype) -> np.ndarray:
        return np.array([getattr(f, name) for f in frames], dtype=dtype)

    return Seed(
        header=raw[:24],
        records=np.frombuffer(raw, dtype=np.uint8, offset=24, count=pos - 24).copy(),
        offsets=np.array(offsets, dtype=np.int64),
        when=np.maximum.accumulate(micros) / span,
        l3=column("l3", np.int64), version=column("version", np.uint8),
        partial_sum=column("partial_sum", np.int64), direction=column("direction", np.uint8),
        conversation=np.array([names.setdefault(f.key, len(names)) for f in frames],
                              dtype=np.int64),
        port_at=column("port_at", np.int64), port=column("port", np.int64),
        conversations=len(names), digest=hashlib.sha256(raw).hexdigest()[:10])


def _classify(frame: bytes, phase: str) -> _Frame:
    """Where a frame's addresses and client port are, and which conversation it is.

    The client is the side with the higher port (ephemeral), the echo requester, or the
    receiver of an ICMP error; both sides share one address on loopback, so ports and
    message types are all there is to tell them apart.
    """
    if len(frame) < 14:
        return _Frame()
    ethertype = struct.unpack_from(">H", frame, 12)[0]
    p = 14
    if ethertype == 0x0800 and len(frame) >= p + 20 and frame[p] >> 4 == 4:
        ihl = (frame[p] & 0x0F) * 4
        words = struct.unpack_from(f">{ihl // 2}H", frame, p)
        info = _Frame(p, 4, sum(words) - sum(words[5:10]))  # minus checksum, addresses
        proto, l4 = frame[p + 9], p + ihl
    elif ethertype == 0x86DD and len(frame) >= p + 40:
        info = _Frame(p, 6)
        proto, l4 = frame[p + 6], p + 40
    else:
        return _Frame(key=("other", ethertype))
    _conversation(frame, proto, l4, info)
    if phase.startswith("scan"):
        info.key = ("phase", phase)  # a scan is one scanner, however many port pairs
    return info


def _conversation(frame: bytes, proto: int, l4: int, info: _Frame) -> None:
    if proto in (6, 17) and len(frame) >= l4 + 4:
        sport, dport = struct.unpack_from(">HH", frame, l4)
        info.direction = 0 if sport >= dport else 1
        info.port_at, info.port = (l4, sport) if sport >= dport else (l4 + 2, dport)
        info.key = (proto, max(sport, dport), min(sport, dport))
    elif proto in (1, 58) and len(frame) >= l4 + 8:
        kind = frame[l4]
        if kind in (8, 128, 0, 129):  # echo request / reply: keyed by identifier
            info.direction = 0 if kind in (8, 128) else 1
            info.key = (proto, "echo", struct.unpack_from(">H", frame, l4 + 4)[0])
            return
        # An ICMP error quotes the offending datagram: it joins that conversation.
        info.direction, info.key = 1, (proto, "error")
        inner = l4 + 8
        if info.version == 4 and len(frame) >= inner + 20:
            inner_proto, inner_l4 = frame[inner + 9], inner + (frame[inner] & 0x0F) * 4
        elif info.version == 6 and len(frame) >= inner + 40:
            inner_proto, inner_l4 = frame[inner + 6], inner + 40
        else:
            return
        if inner_proto in (6, 17) and len(frame) >= inner_l4 + 4:
            sport, dport = struct.unpack_from(">HH", frame, inner_l4)
            info.key = (inner_proto, max(sport, dport), min(sport, dport))
    else:
        info.key = ("proto", proto)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: well-spread 64-bit hashes of uint64 inputs."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _put(block: np.ndarray, at: np.ndarray, values: np.ndarray, dtype: str) -> None:
    """Write ``values`` as ``dtype`` (e.g. '<u4', '>u2') at byte offsets ``at``."""
    width = np.dtype(dtype).itemsize
    raw = np.ascontiguousarray(values.astype(dtype)).view(np.uint8).reshape(-1, width)
    block[at[:, None] + np.arange(width)] = raw


def build_capture(seed: Seed, packets: int, path: Path) -> None:
    """Write ``packets`` records of the replayed seed to ``path`` (atomically)."""
    size = len(seed.records)
    # Each copy of the seed gets an equal slice of the hour and keeps its burst pattern.
    copy_ns = SPAN_NS * seed.count // packets
    tiles_per_chunk = max(1, CHUNK_PACKETS // seed.count)
    prefix = np.frombuffer(V6_PREFIX, dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(seed.header)
        done = 0
        while done < packets:
            n = min(tiles_per_chunk * seed.count, packets - done)
            index = np.arange(n, dtype=np.int64)
            local = index % seed.count
            off = (index // seed.count) * size + seed.offsets[local]
            frame = off + 16
            block = np.tile(seed.records, -(-n // seed.count))[:seed.prefix_bytes(n)]
            tile = (done + index) // seed.count  # done is a whole number of tiles
            ts = START_NS + tile * copy_ns + (seed.when[local] * copy_ns).astype(np.int64)
            _put(block, off, ts // 1_000_000_000, "<u4")
            _put(block, off + 4, (ts % 1_000_000_000) // 1000, "<u4")

            h = _mix(tile * seed.conversations + seed.conversation[local])
            client = CLIENT_NET | (h & np.uint64(0xFFFF)).astype(np.int64)
            server = SERVER_NET | ((h >> np.uint64(16)) % np.uint64(SERVER_HOSTS)).astype(
                np.int64)
            reply = seed.direction[local] == 1
            src = np.where(reply, server, client)
            dst = np.where(reply, client, server)
            v4 = seed.version[local] == 4
            ip = frame[v4] + seed.l3[local[v4]]
            s4, d4 = src[v4], dst[v4]
            _put(block, ip + 12, s4, ">u4")
            _put(block, ip + 16, d4, ">u4")
            total = (seed.partial_sum[local[v4]] + (s4 >> 16) + (s4 & 0xFFFF)
                     + (d4 >> 16) + (d4 & 0xFFFF))
            total = (total & 0xFFFF) + (total >> 16)
            total = (total & 0xFFFF) + (total >> 16)
            _put(block, ip + 10, ~total & 0xFFFF, ">u2")
            v6 = seed.version[local] == 6
            ip6 = frame[v6] + seed.l3[local[v6]]
            for at, values in ((ip6 + 8, src[v6]), (ip6 + 24, dst[v6])):
                block[at[:, None] + np.arange(12)] = prefix
                _put(block, at + 12, values, ">u4")

            # Ephemeral ports: new per copy, same for every packet of one connection.
            ported = seed.port_at[local] >= 0
            port = 32768 + _mix((tile[ported] << 17) + seed.port[local[ported]]
                                + (1 << 60)) % np.uint64(28232)
            _put(block, frame[ported] + seed.port_at[local[ported]], port, ">u2")
            out.write(memoryview(block))
            done += n


def prefix_capture(big: Path, seed: Seed, packets: int, path: Path) -> None:
    """The first ``packets`` records of ``big`` as a capture of their own."""
    remaining = 24 + seed.prefix_bytes(packets)
    with atomic_path(path) as tmp, open(big, "rb") as src, open(tmp, "wb") as out:
        while remaining:
            chunk = src.read(min(remaining, 16 << 20))
            if not chunk:
                raise RuntimeError(f"{big}: shorter than expected")
            out.write(chunk)
            remaining -= len(chunk)


def prepare(args) -> tuple[Seed, Path, Path, Path, Path]:
    """Seed, its file, full capture, prefix for slow peers, an empty capture (cached)."""
    DATA.mkdir(parents=True, exist_ok=True)
    if args.seed:
        seed_path, phases = Path(args.seed), None
    else:
        seed_path = DATA / f"ingest-seed-v{SEED_VERSION}.pcap"
        if not seed_path.exists():
            print(f"recording the seed capture with real tools -> {seed_path}", flush=True)
            make_seed(seed_path)
        phases = json.loads(seed_path.with_suffix(".json").read_text())["phases"]
    seed = parse_seed(seed_path, phases)
    stem = f"ingest-{seed.digest}-b{BUILD_VERSION}-{args.packets}"
    full = DATA / f"{stem}.pcap"
    if not full.exists():
        print(f"building {args.packets:,} packets from {seed.count:,} seed packets "
              f"-> {full}", flush=True)
        _, seconds, _ = measure(lambda: build_capture(seed, args.packets, full))
        print(f"  built in {seconds:.1f} s ({full.stat().st_size / 1e9:.2f} GB)", flush=True)
    peer_packets = min(args.peer_packets, args.packets)
    subset = DATA / f"{stem}-first{peer_packets}.pcap"
    if not subset.exists():
        prefix_capture(full, seed, peer_packets, subset)
    empty = DATA / f"{stem}-first0.pcap"
    if not empty.exists():
        prefix_capture(full, seed, 0, empty)
    return seed, seed_path, full, subset, empty


# -- the contenders -----------------------------------------------------------------------

def netsift_arrow(path: Path) -> tuple[int, dict]:
    """Read the capture into Arrow batches; count rows."""
    import netsift

    reader = netsift.CaptureReader(path)
    rows = 0
    for batch in reader:
        rows += batch.num_rows
    return rows, reader.stats.skipped


def netsift_parquet(path: Path, out: Path) -> tuple[int, int, str]:
    """Capture -> Parquet dataset; return (rows, bytes written, how)."""
    try:
        from netsift.ingest.job import ingest
    except ImportError:
        ingest = None
    if ingest is not None:
        report = ingest([str(path)], out, jobs=1)
        if report.failed:
            raise RuntimeError(report.failed[0].error)
        rows, how = report.packets, "netsift.ingest.job.ingest (store: zstd, hive by hour)"
    else:
        import pyarrow.parquet as pq

        import netsift

        out.mkdir(parents=True, exist_ok=True)
        reader = netsift.CaptureReader(path)
        writer = None
        rows = 0
        for batch in reader:
            if writer is None:
                writer = pq.ParquetWriter(out / "packets.parquet", batch.schema,
                                          compression="zstd")
            writer.write_batch(batch)
            rows += batch.num_rows
        if writer is not None:
            writer.close()
        how = "pyarrow.parquet (zstd), no netsift store module"
    written = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    return rows, written, how


def tshark_fields(path: Path) -> int:
    argv = ["tshark", "-n", "-r", str(path), "-T", "fields"]
    for name in TSHARK_FIELDS:
        argv += ["-e", name]
    lines = 0

    def count(chunk: bytes) -> None:
        nonlocal lines
        lines += chunk.count(b"\n")

    stream_command(argv, count)
    return lines


def tshark_json(path: Path, out: Path | None) -> int:
    """``tshark -T json``; count packets (``"_index"`` keys), optionally keep the text."""
    marker = b'"_index":'
    packets = 0
    tail = b""
    handle = open(out, "wb") if out else None

    def consume(chunk: bytes) -> None:
        nonlocal packets, tail
        joined = tail + chunk
        packets += joined.count(marker)
        # Too short to hold a whole marker, long enough to complete one split by the pipe.
        tail = joined[-(len(marker) - 1):]
        if handle:
            handle.write(chunk)

    try:
        stream_command(["tshark", "-n", "-r", str(path), "-T", "json"], consume)
    finally:
        if handle:
            handle.close()
    return packets


def zstd_bytes(path: Path, level: int = 3) -> int:
    total = 0

    def count(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)

    stream_command(["zstd", f"-{level}", "-q", "-c", str(path)], count)
    return total


def dpkt_fields(path: Path) -> int:
    """The usual dpkt loop, collecting the same header fields into Python lists."""
    import dpkt

    cols: dict[str, list] = {k: [] for k in (
        "ts", "src", "dst", "proto", "ttl", "ip_len", "wire_len", "sport", "dport",
        "tcp_flags", "tcp_window", "icmp_type", "icmp_code")}
    with open(path, "rb") as handle:
        for ts, buf in dpkt.pcap.Reader(handle):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            src = dst = proto = ttl = ip_len = None
            sport = dport = flags = window = icmp_type = icmp_code = None
            if isinstance(ip, dpkt.ip.IP):
                src, dst, proto, ttl, ip_len = ip.src, ip.dst, ip.p, ip.ttl, ip.len
            elif isinstance(ip, dpkt.ip6.IP6):
                src, dst, proto, ttl, ip_len = ip.src, ip.dst, ip.p, ip.hlim, ip.plen + 40
            if proto is not None:
                l4 = ip.data
                if isinstance(l4, dpkt.tcp.TCP):
                    sport, dport, flags, window = l4.sport, l4.dport, l4.flags, l4.win
                elif isinstance(l4, dpkt.udp.UDP):
                    sport, dport = l4.sport, l4.dport
                elif isinstance(l4, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)):
                    icmp_type, icmp_code = l4.type, l4.code
            for name, value in (("ts", ts), ("src", src), ("dst", dst), ("proto", proto),
                                ("ttl", ttl), ("ip_len", ip_len), ("wire_len", len(buf)),
                                ("sport", sport), ("dport", dport), ("tcp_flags", flags),
                                ("tcp_window", window), ("icmp_type", icmp_type),
                                ("icmp_code", icmp_code)):
                cols[name].append(value)
    return len(cols["ts"])


def nfstream_flows(path: Path) -> tuple[int, int]:
    """NFStreamer over the file, one meter, no statistics and no L7 dissection.

    Returns (flows, packets counted in flows).
    """
    from nfstream import NFStreamer

    streamer = NFStreamer(source=str(path), statistical_analysis=False, n_dissections=0,
                          n_meters=1)
    flows = packets = 0
    for flow in streamer:
        flows += 1
        packets += flow.bidirectional_packets
    return flows, packets


# -- where the reader's time goes ---------------------------------------------------------

PROFILE_PACKETS = 2_000_000  # in-memory stages use at most this prefix


def profile_reader(path: Path, seed: Seed, packets: int, runs: int = 3) -> dict:
    """Time each stage of netsift's pcap read alone, in CPU ns per packet (median of runs).

    Stages: copying the file from the page cache, the compiled walk+decode on memory
    that is cold (the whole file) or cache-resident (1 MiB decoded over and over), the
    cost of a fresh batch of columns per batch, Arrow export, and the reader end to end,
    as shipped and with a 256 KiB read chunk.
    """
    import netsift
    from netsift.ingest import pcap, reader, skips
    from netsift.ingest.decode import Columns

    rows = reader.DEFAULT_BATCH_ROWS
    n = min(packets, PROFILE_PACKETS)
    data = np.fromfile(path, dtype=np.uint8, count=24 + seed.prefix_bytes(n))
    header = pcap.PcapHeader(data[:24].tobytes(), str(path))
    hot_n = max(1, (1 << 20) * n // len(data))
    hot = data[:24 + seed.prefix_bytes(hot_n)].copy()
    stages: dict[str, float] = {}

    def cpu_ns(label: str, fn: Callable[[], int]) -> None:
        timings = []
        for _ in range(runs):
            count, _, cpu = measure(fn)
            timings.append(cpu / count * 1e9)
        stages[label] = sorted(timings)[len(timings) // 2]

    reused = Columns(rows)

    def walk(buf: np.ndarray, fresh: bool = False, export: bool = False) -> int:
        state, counters = pcap.new_state(), skips.new_counters()
        cols = Columns(rows) if fresh else reused
        pos, total = 24, 0
        while pos < len(buf):
            pos, row = pcap.walk(buf, pos, len(buf), True, header.swapped, header.nanos,
                                 header.linktype, header.max_caplen, state, counters,
                                 cols.arrays, 0, rows)
            if export:
                cols.to_arrow(row, "profile")
            if fresh:
                cols = Columns(rows)
            total += row
            if row == 0:
                break
        return total

    def read_only(chunk: int) -> int:
        buf = np.empty(chunk, dtype=np.uint8)
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(memoryview(buf)):
                pass
        return packets

    def end_to_end() -> int:
        return sum(b.num_rows for b in netsift.CaptureReader(path))

    walk(hot)  # numba cache
    chunk, small = reader.CHUNK_BYTES, 256 << 10
    cpu_ns(f"read() the file in {chunk >> 10} KiB chunks, no decoding",
           lambda: read_only(chunk))
    if chunk != small:
        cpu_ns(f"read() the file in {small >> 10} KiB chunks, no decoding",
               lambda: read_only(small))
    cpu_ns("walk+decode, file in memory (cache-cold), batch reused", lambda: walk(data))
    cpu_ns("walk+decode, 1 MiB cache-resident, batch reused",
           lambda: sum(walk(hot) for _ in range(max(1, n // hot_n))))
    cpu_ns("walk+decode, file in memory, new Columns per batch",
           lambda: walk(data, fresh=True))
    cpu_ns("walk+decode, file in memory, new Columns + to_arrow",
           lambda: walk(data, fresh=True, export=True))
    cpu_ns(f"CaptureReader end to end (CHUNK_BYTES {chunk >> 10} KiB)", end_to_end)
    if chunk != small:
        try:
            reader.CHUNK_BYTES = small
            cpu_ns(f"CaptureReader end to end (CHUNK_BYTES {small >> 10} KiB)", end_to_end)
        finally:
            reader.CHUNK_BYTES = chunk
    return {"cpu_ns_per_packet": stages, "in_memory_packets": n,
            "bytes_per_packet": (path.stat().st_size - 24) / packets}


# -- running it all -----------------------------------------------------------------------

def median_run(runs: int, fn: Callable[[], object]) -> tuple[object, float, float]:
    """Run ``fn`` ``runs`` times; return the run with the median wall time."""
    done = sorted((measure(fn) for _ in range(max(1, runs))), key=lambda r: r[1])
    return done[len(done) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--packets", type=float, default=5e6,
                        help="packets in the built capture (default 5e6)")
    parser.add_argument("--peer-packets", type=float, default=200_000,
                        help="prefix read by slow peers: tshark, dpkt (default 2e5)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 300k packets, 20k for slow peers")
    parser.add_argument("--seed", help="use this Ethernet pcap (little-endian, µs) as the "
                                       "seed instead of recording one")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per peer; the median counts (default 1; netsift: "
                             "at least 3)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["parquet", "tshark-fields", "tshark-json", "dpkt",
                                 "nfstream"], help="tools to leave out")
    parser.add_argument("--profile", action="store_true",
                        help="also time the reader's stages (always on when the "
                             "per-core target is missed)")
    parser.add_argument("--json", metavar="OUT", help="write results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.packets, args.peer_packets = 300_000, 20_000
    args.packets, args.peer_packets = int(args.packets), int(args.peer_packets)
    netsift_runs = max(3, args.repeat)

    seed, seed_path, full, subset, empty = prepare(args)
    peer_n = min(args.peer_packets, args.packets)
    pcap_bytes = full.stat().st_size
    print(f"capture: {full.name}: {args.packets:,} packets, {pcap_bytes / 1e9:.2f} GB "
          f"({(pcap_bytes - 24) / args.packets:.0f} bytes/packet incl. record header); "
          f"seed {seed.count:,} packets, {seed.conversations} conversations", flush=True)
    warm_page_cache(full)
    results: list[Measurement] = []

    def record(m: Measurement) -> None:
        results.append(m)
        scope = f"first {m.packets:,}" if m.subset else f"{m.packets:,}"
        print(f"  {m.tool:<20} {scope:>14} packets {m.seconds:8.2f} s "
              f"{m.rate:>12,.0f} packets/s {m.rate_per_cpu:>12,.0f} packets/CPU-s",
              flush=True)

    # netsift: numba's cache is loaded by a small run first, then the full capture is timed.
    netsift_arrow(subset)
    (rows, skipped), seconds, cpu = median_run(netsift_runs, lambda: netsift_arrow(full))
    if rows != args.packets or skipped:
        raise SystemExit(f"netsift read {rows} rows of {args.packets} (skipped: {skipped})")
    arrow = Measurement("netsift -> Arrow", rows, seconds, cpu,
                        note=f"CaptureReader, one process; median of {netsift_runs}")
    record(arrow)

    sizes: dict[str, dict] = {}
    if "parquet" not in args.skip:
        (rows, written, how), seconds, cpu = median_run(
            netsift_runs, lambda: _scratch(lambda out: netsift_parquet(full, out)))
        sizes["netsift Parquet"] = {"packets": rows, "bytes": written}
        record(Measurement("netsift -> Parquet", rows, seconds, cpu,
                           note=f"{how}; median of {netsift_runs}",
                           extra={"bytes": written}))

    if "nfstream" not in args.skip:
        try:
            import nfstream  # noqa: F401
        except ImportError as exc:
            print(f"  nfstream: not importable ({exc}); left out", flush=True)
        else:
            (flows, counted), seconds, cpu = median_run(args.repeat,
                                                        lambda: nfstream_flows(full))
            record(Measurement("nfstream (1 meter)", args.packets, seconds, cpu,
                               note="NFStreamer: statistical_analysis=False, "
                                    "n_dissections=0, n_meters=1",
                               extra={"flows": flows, "packets_in_flows": counted}))

    startup: dict[str, tuple[float, float]] = {}
    for kind, fn in (("tshark-fields", tshark_fields),
                     ("tshark-json", lambda path: tshark_json(path, None))):
        if kind not in args.skip:
            _, seconds, cpu = median_run(3, lambda fn=fn: fn(empty))
            startup[kind] = (seconds, cpu)
    if startup:
        print("  tshark start-up, subtracted below: "
              + ", ".join(f"{k} {v[0]:.2f} s" for k, v in startup.items()), flush=True)

    if "tshark-fields" not in args.skip:
        lines, seconds, cpu = median_run(args.repeat, lambda: tshark_fields(subset))
        if lines != peer_n:
            raise SystemExit(f"tshark -T fields printed {lines} lines, expected {peer_n}")
        wall0, cpu0 = startup["tshark-fields"]
        record(Measurement("tshark -T fields", peer_n, seconds - wall0, cpu - cpu0,
                           subset=True, note=f"{len(TSHARK_FIELDS)} fields, -n",
                           extra={"startup_seconds": wall0}))

    if "tshark-json" not in args.skip:
        (count, json_bytes), seconds, cpu = median_run(
            args.repeat, lambda: _scratch(lambda out: _json_run(subset, out, sizes)))
        if count != peer_n:
            raise SystemExit(f"tshark -T json gave {count} packets, expected {peer_n}")
        wall0, cpu0 = startup["tshark-json"]
        record(Measurement("tshark -T json", peer_n, seconds - wall0, cpu - cpu0,
                           subset=True, note="-n", extra={"startup_seconds": wall0,
                                                          "json_bytes": json_bytes}))
        # The seed as captured: sizes without the replay's repetition.
        _scratch(lambda out: _json_run(seed_path, out, sizes, label="seed "))
        if "parquet" not in args.skip:
            rows, written, _ = _scratch(lambda out: netsift_parquet(seed_path, out))
            sizes["seed netsift Parquet"] = {"packets": rows, "bytes": written}

    if "dpkt" not in args.skip:
        import dpkt

        count, seconds, cpu = median_run(args.repeat, lambda: dpkt_fields(subset))
        record(Measurement("dpkt", count, seconds, cpu, subset=True,
                           note=f"dpkt {dpkt.__version__}: pcap.Reader + Ethernet, the "
                                "same fields into lists"))

    return report(args, seed, full, arrow, results, sizes, peer_n)


def _scratch(fn: Callable[[Path], object]) -> object:
    """Call ``fn`` with a fresh directory under bench/data, removed afterwards."""
    DATA.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".scratch-", dir=DATA))
    try:
        return fn(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _json_run(path: Path, scratch: Path, sizes: dict, label: str = "") -> tuple[int, int]:
    """tshark -T json of ``path`` to a file; record raw and zstd -3 sizes in ``sizes``."""
    text = scratch / "packets.json"
    count = tshark_json(path, text)
    raw = text.stat().st_size
    sizes[f"{label}tshark -T json"] = {"packets": count, "bytes": raw}
    sizes[f"{label}tshark -T json | zstd -3"] = {"packets": count, "bytes": zstd_bytes(text)}
    return count, raw


def report(args, seed: Seed, full: Path, arrow: Measurement, results: list[Measurement],
           sizes: dict[str, dict], peer_n: int) -> int:
    print()
    rows = []
    for m in results:
        rows.append([m.tool, f"first {m.packets:,}" if m.subset else f"{m.packets:,}",
                     m.seconds, m.rate, m.rate_per_cpu,
                     None if m is arrow else arrow.rate / m.rate,
                     None if m is arrow else arrow.rate_per_cpu / m.rate_per_cpu])
    print(format_table(["tool", "packets", "seconds", "packets/s", "packets/CPU-s",
                        "netsift-arrow / tool", "per CPU-s"], rows))
    subset_tools = [m.tool for m in results if m.subset]
    if subset_tools:
        print(f"{', '.join(subset_tools)}: on the first {peer_n:,} packets of the same "
              "capture; tshark's start-up on an empty capture subtracted.")

    sizes["pcap"] = {"packets": arrow.packets, "bytes": full.stat().st_size - 24}
    print()
    print(format_table(["stored as", "packets", "bytes/packet"],
                       [[name, f"{v['packets']:,}", v["bytes"] / v["packets"]]
                        for name, v in sizes.items()]))

    def per_packet(name: str) -> float | None:
        v = sizes.get(name)
        return v["bytes"] / v["packets"] if v else None

    by_tool = {m.tool: m for m in results}
    targets = [("netsift -> Arrow per core", f">= {TARGET_ARROW_PER_CORE:,} packets/CPU-s",
                f"{arrow.rate_per_cpu:,.0f} (wall {arrow.rate:,.0f}/s)",
                arrow.rate_per_cpu >= TARGET_ARROW_PER_CORE)]
    if "tshark -T json" in by_tool:
        tj = by_tool["tshark -T json"]
        ratio = arrow.rate_per_cpu / tj.rate_per_cpu
        targets.append(("vs tshark -T json, per core", f">= {TARGET_VS_TSHARK_JSON:.0f}x",
                        f"{ratio:,.0f}x (wall {arrow.rate / tj.rate:,.0f}x)",
                        ratio >= TARGET_VS_TSHARK_JSON))
    if "nfstream (1 meter)" in by_tool:
        nf = by_tool["nfstream (1 meter)"]
        ratio = arrow.rate_per_cpu / nf.rate_per_cpu
        targets.append(("vs nfstream, per core", "> 1x",
                        f"{ratio:,.1f}x (wall {arrow.rate / nf.rate:,.1f}x)", ratio > 1))
    parquet, json_zstd = per_packet("netsift Parquet"), per_packet("tshark -T json | zstd -3")
    if parquet and json_zstd:
        ratio = parquet / json_zstd
        seed_p, seed_j = (per_packet("seed netsift Parquet"),
                          per_packet("seed tshark -T json | zstd -3"))
        seed_note = f"; seed as captured {seed_p / seed_j:.3f}" if seed_p and seed_j else ""
        targets.append(("Parquet bytes / zstd JSON bytes",
                        f"<= {TARGET_PARQUET_VS_JSON_ZSTD}",
                        f"{ratio:.4f} = 1/{1 / ratio:.0f}{seed_note}",
                        ratio <= TARGET_PARQUET_VS_JSON_ZSTD))
    print()
    print(format_table(["target", "goal", "measured", "verdict"],
                       [[name, goal, got, verdict(ok)] for name, goal, got, ok in targets]))

    profile = None
    if args.profile or arrow.rate_per_cpu < TARGET_ARROW_PER_CORE:
        try:
            profile = profile_reader(full, seed, arrow.packets)
        except (ImportError, AttributeError, TypeError) as exc:
            # It drives netsift's internals directly; they may have moved on.
            print(f"\nreader profile unavailable: {exc!r}")
    if profile:
        print()
        print(f"netsift reader stages, CPU ns per packet, median of 3 "
              f"({profile['bytes_per_packet']:.0f} bytes/packet in the file; in-memory "
              f"stages on the first {profile['in_memory_packets']:,} packets):")
        print(format_table(["stage", "ns/packet", "packets/s"],
                           [[k, v, 1e9 / v] for k, v in profile["cpu_ns_per_packet"].items()]))

    if args.json:
        write_json(Path(args.json), {
            "machine": machine(),
            "capture": {"file": full.name, "packets": arrow.packets,
                        "bytes": full.stat().st_size, "seed_packets": seed.count,
                        "seed_digest": seed.digest, "peer_packets": peer_n},
            "versions": {"tshark": command_version(["tshark", "--version"]),
                         "zstd": command_version(["zstd", "--version"])},
            "results": [m.as_dict() for m in results],
            "sizes": {k: dict(v, bytes_per_packet=v["bytes"] / v["packets"])
                      for k, v in sizes.items()},
            "targets": [{"target": n, "goal": g, "measured": m, "pass": ok}
                        for n, g, m, ok in targets],
            "profile": profile,
        })
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
