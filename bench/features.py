"""Benchmark the feature engines side by side on a synthetic packet dataset.

    python bench/features.py                 # 20 M packets (1x), then 2x and 4x; Polars and Spark
    python bench/features.py --quick         # 2 M packets, smoke run
    python bench/features.py --engines polars --scales 1 2 4 --json bench/out/features.json
    python bench/features.py --spark-scales 1 --repeat 5   # Spark at 1x only; 5 Polars runs

The dataset is written once per size with netsift's own packet store (the layout
``netsift ingest`` produces) under ``bench/data/`` and reused. Traffic is synthetic but
shaped like an edge link: 50 000 sources with Zipf-distributed activity, 5 000 servers,
TCP/UDP/ICMP mix, a TCP flag mix (SYN, SYN-ACK, ACK, FIN, RST), scans, realistic lengths,
TTLs and windows. Packets only flow from sources to servers, so no handshake completes
(``--validated-only`` keeps nothing here; the default spec is what is timed). Each 1x of
data covers one hour at the same packet rate, so 2x and 4x add hours (more windows), the
way real archives grow.

Every engine run happens in a fresh child process, so peak memory is that run's alone:
for Polars the process's own peak RSS (``ru_maxrss``, so nothing samples it and takes
CPU from the two cores measured), for Spark the process tree's (the Python driver plus
its JVM), sampled every 50 ms. Reported time is wall time of the feature computation
including reading Parquet and writing the feature table, excluding interpreter and JVM
start-up (Spark session start-up is reported separately) and a warm-up on the dataset's
first row group (numba loads its compiled kernels, Spark generates its plan code). "CPU
s" is the Polars process's CPU time over the same span, every thread's (at 10 M packets/s
two cores allow 4 CPU-s an hour of 20 M packets); Spark's JVM is not counted. The
Polars engine runs ``--repeat`` times per scale and the median run is reported (shared
machines are noisy); Spark, minutes a run, runs once. For the Polars engine, "compute
packets/s" is the computation alone, in another fresh process: each hour is read into
memory untimed, then featurised, results dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine, verdict, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
TARGET_POLARS_RATE = 10_000_000
BATCH_ROWS = 256 * 1024
HOUR_NS = 3600 * 1_000_000_000
START_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z
N_SOURCES = 50_000
N_SERVERS = 5_000


def _v4_mapped(values: np.ndarray) -> pa.FixedSizeBinaryArray:
    """uint32 IPv4 addresses -> 16-byte IPv4-mapped binary column."""
    raw = np.zeros((len(values), 16), dtype=np.uint8)
    raw[:, 10] = raw[:, 11] = 0xFF
    raw[:, 12:] = values.astype(">u4").view(np.uint8).reshape(-1, 4)
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), len(values), [None, pa.py_buffer(raw.tobytes())])


def synth_batch(rng: np.random.Generator, n: int, t0: int, t1: int, record0: int,
                source_weights: np.ndarray) -> pa.RecordBatch:
    """n packets with timestamps in [t0, t1), sorted by time."""
    from netsift.schema import PACKET_SCHEMA

    ts = np.sort(rng.integers(t0, t1, n, dtype=np.int64))
    src_idx = rng.choice(N_SOURCES, n, p=source_weights)
    src = (0x0A000000 + src_idx).astype(np.uint32)                     # 10.0.0.0/16
    server = rng.zipf(1.3, n) % N_SERVERS
    dst = (0xC6336400 + server).astype(np.uint32)                      # 198.51.100.0/..
    kind = rng.random(n)
    proto = np.where(kind < 0.80, 6, np.where(kind < 0.95, 17, 1)).astype(np.uint8)
    tcp, udp, icmp = proto == 6, proto == 17, proto == 1
    popular = np.array([443, 80, 53, 22, 8080, 25, 123, 3389], dtype=np.uint16)
    dport = np.where(rng.random(n) < 0.85, popular[rng.integers(0, 8, n)],
                     rng.integers(1, 65536, n)).astype(np.uint16)
    # Scanners (1 % of sources) sweep ports; a source's ephemeral ports cluster.
    scanner = (src_idx % 100) == 7
    dport = np.where(scanner, rng.integers(1, 1025, n), dport).astype(np.uint16)
    sport = (32768 + (src_idx * 7919 + rng.integers(0, 64, n)) % 28232).astype(np.uint16)
    flag_values = np.array([0x010, 0x018, 0x002, 0x012, 0x011, 0x004, 0x014], dtype=np.uint16)
    flag_p = np.array([0.55, 0.25, 0.08, 0.04, 0.04, 0.02, 0.02])
    flags = flag_values[rng.choice(len(flag_values), n, p=flag_p)]
    flags = np.where(scanner, 0x002, flags).astype(np.uint16)
    windows = np.array([64240, 65535, 502, 29200, 1024, 0], dtype=np.uint16)
    tcp_window = windows[rng.integers(0, len(windows), n)]
    ttl = (np.array([64, 128, 255], dtype=np.uint8)[src_idx % 3]
           - rng.integers(0, 12, n).astype(np.uint8))
    size_kind = rng.random(n)
    wire_len = np.where(size_kind < 0.45, 66, np.where(size_kind < 0.75, 1514,
                        rng.integers(60, 1515, n))).astype(np.uint32)
    wire_len = np.where(udp, rng.integers(60, 600, n), wire_len).astype(np.uint32)
    wire_len = np.where(icmp, 98, wire_len).astype(np.uint32)
    icmp_type = np.where(rng.random(n) < 0.5, 8, 0).astype(np.uint8)

    def masked(values: np.ndarray, valid: np.ndarray, dtype: pa.DataType) -> pa.Array:
        return pa.array(values, type=dtype, mask=~valid)

    ports = tcp | udp
    columns = {
        "ts": pa.array(ts, pa.int64()),
        "src": _v4_mapped(src),
        "dst": _v4_mapped(dst),
        "ip_version": pa.array(np.full(n, 4, np.uint8)),
        "proto": pa.array(proto),
        "sport": masked(sport, ports, pa.uint16()),
        "dport": masked(dport, ports, pa.uint16()),
        "ttl": pa.array(ttl),
        "ip_len": pa.array(wire_len - 14),
        "wire_len": pa.array(wire_len),
        "cap_len": pa.array(wire_len),
        "tcp_flags": masked(flags, tcp, pa.uint16()),
        "tcp_window": masked(tcp_window, tcp, pa.uint16()),
        "icmp_type": masked(icmp_type, icmp, pa.uint8()),
        "icmp_code": masked(np.zeros(n, np.uint8), icmp, pa.uint8()),
        "vlan": pa.nulls(n, pa.uint16()),
        "vlan_inner": pa.nulls(n, pa.uint16()),
        "ethertype": pa.array(np.full(n, 0x0800, np.uint16)),
        "frag_offset": pa.array(np.zeros(n, np.uint16)),
        "more_fragments": pa.array(np.zeros(n, np.bool_)),
        "interface": pa.array(np.zeros(n, np.uint16)),
        "source": pa.array(["synthetic"] * n, pa.string()),
        "record": pa.array(np.arange(record0, record0 + n, dtype=np.int64)),
    }
    return pa.RecordBatch.from_arrays([columns[f.name] for f in PACKET_SCHEMA],
                                      schema=PACKET_SCHEMA)


def make_dataset(packets_per_hour: int, hours: int, seed: int = 7) -> Path:
    """Write (or reuse) a packet dataset of ``hours`` hours; return its directory."""
    from netsift import store
    from netsift.schema import PACKET_SCHEMA

    root = DATA / f"packets-{packets_per_hour}x{hours}h"
    # The store's format (schema, encodings) changes decode cost: a dataset written in
    # another format is written again.
    layout = json.dumps([str(PACKET_SCHEMA), store.PARQUET_OPTIONS, seed], sort_keys=True)
    if (root / "_complete").exists() and (root / "_complete").read_text() == layout:
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, N_SOURCES + 1) ** 0.9
    weights = rng.permutation(weights / weights.sum())
    record = 1
    for hour in range(hours):
        def batches(hour=hour):
            nonlocal record
            t0 = START_NS + hour * HOUR_NS
            step = HOUR_NS * BATCH_ROWS // packets_per_hour
            done = 0
            while done < packets_per_hour:
                n = min(BATCH_ROWS, packets_per_hour - done)
                lo = t0 + done * HOUR_NS // packets_per_hour
                yield synth_batch(rng, n, lo, min(lo + step, t0 + HOUR_NS), record, weights)
                record += n
                done += n
        store.write_stream(batches(), root, f"synthetic-{hour:04d}")
    (root / "_complete").write_text(layout)
    return root


# -- one engine run, in a child process --------------------------------------------------

def _child(engine: str, dataset: str, out: str, master: str) -> None:
    """Time ``write_features`` once; print a JSON line (seconds, rows, packets).

    Before the timed run each engine computes, untimed, the features of the dataset's
    first row group (written to a file of its own): numba loads its compiled kernels,
    Spark compiles its plan code. The warm-up is the same small input at every scale, so
    no scale runs over data an earlier pass has already brought into memory.
    """
    import pyarrow.parquet as pq

    import netsift.features as nf
    from netsift import store

    spec = nf.FeatureSpec()
    session_seconds = 0.0
    spark = None
    if engine == "spark":
        from netsift.platform.spark import get_session

        started = time.perf_counter()
        spark = get_session(master, app_name="netsift-bench",
                            conf={"spark.driver.memory": "6g",
                                  "spark.sql.shuffle.partitions": "8"})
        spark.range(1).count()  # the JVM is up and a job has run
        session_seconds = time.perf_counter() - started
    warm_up = Path(out).with_name("warm-up.parquet")
    first = pq.ParquetFile(sorted(store.dataset_files(dataset))[0])
    pq.write_table(first.read_row_group(0), warm_up)
    nf.compute_features(str(warm_up), spec, engine=engine, spark=spark)
    cpu = _cpu_seconds()
    started = time.perf_counter()
    run = nf.write_features(dataset, out, spec, engine=engine, spark=spark)
    seconds = time.perf_counter() - started
    # The JVM's CPU is not this process's: Spark's run reports none.
    cpu = None if spark is not None else _cpu_seconds() - cpu
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "rows": run.rows,
                      "packets": run.packets,
                      "session_seconds": session_seconds,
                      "own_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                      * 1024}), flush=True)
    if spark is not None:
        spark.stop()


def _cpu_seconds() -> float:
    """CPU time of this process so far, every thread's, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _compute_child(dataset: str) -> None:
    """Time the embedded engine's computation alone: each hour's packets are read into
    memory untimed (as the engine slices them), then featurised; print a JSON line."""
    import netsift.features as nf
    from netsift.features import polars_engine as pe

    spec = nf.FeatureSpec()
    files = pe.packet_files(dataset)
    chunks = pe.chunks(files, spec.window_ns)
    pe._kernel(next(pe._slices(chunks[0], spec)).slice(0, BATCH_ROWS), spec)  # warm-up
    seconds, packets = 0.0, 0
    for chunk in chunks:
        slices = list(pe._slices(chunk, spec))
        started = time.perf_counter()
        for table in slices:
            pe._kernel(table, spec)
        seconds += time.perf_counter() - started
        packets += sum(t.num_rows for t in slices)
    print(json.dumps({"seconds": seconds, "packets": packets}), flush=True)


def compute_only(dataset: Path) -> dict:
    """:func:`_compute_child` in a fresh process."""
    output = subprocess.run([sys.executable, __file__, "--compute-child", str(dataset)],
                            stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _tree_rss(root) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except Exception:  # the process ended between listing and reading
            pass
    return total


def run_engine(engine: str, dataset: Path, master: str) -> dict:
    """One engine over one dataset in a fresh process; wall time and peak RSS (Polars:
    the process's own, as it reports it; Spark: the process tree's, sampled)."""
    import psutil

    with tempfile.TemporaryDirectory(dir=DATA, prefix="features-out-") as scratch:
        out = Path(scratch) / "features"
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", engine, str(dataset), str(out), master],
            stdout=subprocess.PIPE, text=True)
        root = psutil.Process(proc.pid)
        peak = 0
        while engine == "spark" and proc.poll() is None:
            peak = max(peak, _tree_rss(root))
            time.sleep(0.05)
        output = proc.stdout.read()
        proc.wait()
        if proc.returncode:
            raise RuntimeError(f"{engine} run failed (exit {proc.returncode})")
        result = json.loads(output.strip().splitlines()[-1])
        stored = sum(f.stat().st_size for f in out.glob("*.parquet"))
    result.update(engine=engine, feature_bytes=stored,
                  peak_rss=max(peak, result.pop("own_peak_rss")))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--packets", type=float, default=20e6,
                        help="packets at 1x, one hour of traffic (default 2e7)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4],
                        help="multiples of --packets to run (default 1 2 4)")
    parser.add_argument("--engines", nargs="+", choices=("polars", "spark"),
                        default=["polars", "spark"])
    parser.add_argument("--spark-scales", type=int, nargs="+",
                        help="scales to run Spark at (default: --scales)")
    parser.add_argument("--master", default="local[*]", help="Spark master (local[*])")
    parser.add_argument("--repeat", type=int, default=3,
                        help="Polars runs per scale; the median is reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="2 M packets, scales 1 2")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write results here")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--compute-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    if args.compute_child:
        _compute_child(args.compute_child)
        return 0
    if args.quick:
        args.packets, args.scales = 2e6, [1, 2]
    per_hour = int(args.packets)
    results = []
    for scale in args.scales:
        print(f"dataset {scale}x: {per_hour * scale:,} packets ...", file=sys.stderr)
        dataset = make_dataset(per_hour, scale)
        os.sync()  # a dataset just written is not flushed to disk during a timed run
        for engine in args.engines:
            if engine == "spark" and args.spark_scales and scale not in args.spark_scales:
                continue
            repeat = args.repeat if engine == "polars" else 1
            runs = sorted((run_engine(engine, dataset, args.master) for _ in range(repeat)),
                          key=lambda r: r["seconds"])
            result = runs[len(runs) // 2]  # the median run
            result["peak_rss"] = max(r["peak_rss"] for r in runs)
            result.update(scale=scale, runs=len(runs),
                          rate=result["packets"] / result["seconds"])
            if engine == "polars":
                compute = sorted((compute_only(dataset) for _ in range(repeat)),
                                 key=lambda r: r["seconds"])[repeat // 2]
                result["compute_seconds"] = compute["seconds"]
                result["compute_rate"] = compute["packets"] / compute["seconds"]
            results.append(result)
            print(f"  {engine}: {result['seconds']:.1f} s", file=sys.stderr)
    rows = [(r["engine"], f"{r['scale']}x", r["packets"], r["rows"], r["seconds"],
             r["cpu_seconds"], r["rate"], r.get("compute_rate"), r["peak_rss"] / 2**20,
             r["session_seconds"] or None)
            for r in results]
    print(format_table(["engine", "data", "packets", "node-windows", "seconds", "CPU s",
                        "packets/s", "compute packets/s", "peak RSS MiB", "session start s"],
                       rows))
    by = {(r["engine"], r["scale"]): r for r in results}
    print()
    lines = []
    base = min(args.scales)
    for engine in args.engines:
        growth = [f"{s}x: {by[engine, s]['seconds'] / by[engine, base]['seconds']:.2f}"
                  for s in args.scales if (engine, s) in by]
        lines.append(f"{engine} time relative to {base}x (linear = the scale): "
                     + ", ".join(growth))
    if "polars" in args.engines:
        # Every scale must meet the target: the slowest one is reported.
        slowest = min(r["rate"] for r in results if r["engine"] == "polars")
        lines.append(f"polars >= {TARGET_POLARS_RATE:,} packets/s, Parquet to Parquet: "
                     f"{verdict(slowest >= TARGET_POLARS_RATE)} ({slowest:,.0f}, slowest scale)")
        compute = min(r["compute_rate"] for r in results if r["engine"] == "polars")
        lines.append(f"polars >= {TARGET_POLARS_RATE:,} packets/s, computation alone "
                     f"(packets in memory): {verdict(compute >= TARGET_POLARS_RATE)} "
                     f"({compute:,.0f}, slowest scale)")
    if {"polars", "spark"} <= set(args.engines):
        ratios = [f"{s}x: {by['spark', s]['seconds'] / by['polars', s]['seconds']:.1f}"
                  for s in args.scales if ("spark", s) in by and ("polars", s) in by]
        lines.append("polars faster than spark local by: " + ", ".join(ratios))
    print("\n".join(lines))
    if args.json:
        write_json(args.json, {"machine": machine(), "cores": os.cpu_count(),
                               "results": results, "summary": lines})
    return 0


if __name__ == "__main__":
    sys.exit(main())
