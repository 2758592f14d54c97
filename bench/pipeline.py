"""Benchmark the batch pipeline on a Spark cluster: tshark JSON against netsift, end to end.

    python bench/pipeline.py                          # 3 M packets in 8 capture files
    python bench/pipeline.py --packets 300000         # smaller: a few minutes less
    python bench/pipeline.py --json bench/out/pipeline.json

Both paths start from the same capture files and end with the same per-host feature
table (``netsift.features.spark_engine.compute``, 60 s windows, written as Parquet), on
one standalone cluster the script starts (a master and two workers on 127.0.0.1):

* JSON, what users do today: ``tshark -n -r FILE -T json | zstd -3`` per capture file
  (as many at once as there are cores), then one Spark job reads the ``.json.zst``
  archives (``spark.read.json``, multiLine, Spark's own zstd codec: nothing is
  decompressed by hand), flattens the fields the features need
  (``_source.layers.ip.ip.src`` ...) into the packet schema's columns and computes
  the features.
* netsift: ``netsift ingest --engine spark`` (executors decode the captures and write
  the Parquet packet dataset), then the same feature computation over the dataset.

End-to-end time is wall seconds from the captures to the written feature table, tshark
included; starting the cluster and the session is not counted for either. Stored bytes:
the ``.json.zst`` archives against the Parquet dataset.

Choices that favour the JSON path: tshark runs with ``-n`` and in parallel; Spark reads
the JSON with an explicit schema of only the fields used (schema inference reads
everything once more, and fails on tshark's JSON anyway: HTTP bodies become keys that
differ only in case); both paths are warmed up first on a small capture, so neither pays
for starting executors or their Python workers. The feature tables of the two paths are
compared afterwards (not timed) to show both computed the same thing.

The captures: ``samples/lan.pcap.gz`` (a real LAN capture) tiled to ``--packets`` by
``bench/ingest.py``'s replay (one hour from 2026-01-01, addresses rewritten per copy and
conversation, so thousands of hosts), then cut into ``--files`` files by ``editcap -c``.
Both are cached in ``bench/data/``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA,
    REPO,
    atomic_path,
    command_version,
    format_table,
    machine,
    measure,
    verdict,
    warm_page_cache,
    write_json,
)

TARGET_SPEEDUP = 20.0
TARGET_SMALLER = 10.0
SAMPLE = REPO / "samples" / "lan.pcap.gz"

# Only the fields the features read; values in tshark's JSON are all strings.
TSHARK_SCHEMA = (
    "_source STRUCT<layers: STRUCT<"
    "frame: STRUCT<`frame.time_epoch`: STRING, `frame.len`: STRING>, "
    "ip: STRUCT<`ip.src`: STRING, `ip.dst`: STRING, `ip.proto`: STRING, `ip.ttl`: STRING>, "
    "ipv6: STRUCT<`ipv6.src`: STRING, `ipv6.dst`: STRING, `ipv6.nxt`: STRING, "
    "`ipv6.hlim`: STRING, `ipv6.hopopts`: STRUCT<`ipv6.hopopts.nxt`: STRING>>, "
    "tcp: STRUCT<`tcp.srcport`: STRING, `tcp.dstport`: STRING, `tcp.flags`: STRING, "
    "`tcp.window_size_value`: STRING>, "
    "udp: STRUCT<`udp.srcport`: STRING, `udp.dstport`: STRING>>>")


# -- inputs -------------------------------------------------------------------------------

def seed_capture() -> Path:
    """samples/lan.pcap.gz decompressed (cached): a little-endian microsecond pcap."""
    path = DATA / "pipeline-seed-lan.pcap"
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_bytes(gzip.decompress(SAMPLE.read_bytes()))
    return path


def shifted_replay(seed: Path, packets: int, path: Path) -> None:
    """The seed's records repeated back to back up to ``packets``, copy i shifted in
    time by i seed spans (its duration plus one mean gap): the same hosts, for longer."""
    raw = seed.read_bytes()
    if raw[:4] != b"\xd4\xc3\xb2\xa1":
        raise SystemExit(f"{seed}: the seed must be a little-endian microsecond pcap")
    offsets, pos = [], 24
    while pos + 16 <= len(raw) and pos + 16 + int.from_bytes(raw[pos + 8:pos + 12], "little") \
            <= len(raw):
        offsets.append(pos - 24)
        pos += 16 + int.from_bytes(raw[pos + 8:pos + 12], "little")
    records = np.frombuffer(raw, np.uint8, pos - 24, 24)
    at = np.array(offsets, dtype=np.int64)
    words = records[at[:, None] + np.arange(8)].astype(np.int64)
    sec = words[:, 0] | words[:, 1] << 8 | words[:, 2] << 16 | words[:, 3] << 24
    usec = words[:, 4] | words[:, 5] << 8 | words[:, 6] << 16 | words[:, 7] << 24
    micros = sec * 1_000_000 + usec
    span = micros.max() - micros.min() + max(1, (micros.max() - micros.min()) // len(at))
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(raw[:24])
        for copy in range(-(-packets // len(at))):
            block = records.copy()
            shifted = micros + copy * span
            for field, values in ((0, shifted // 1_000_000), (4, shifted % 1_000_000)):
                for k in range(4):
                    block[at + field + k] = (values >> (8 * k)) & 0xFF
            keep = min(len(at), packets - copy * len(at))
            out.write(memoryview(block)[:at[keep] if keep < len(at) else len(block)])


def capture_set(replay: str, packets: int, files: int) -> Path:
    """A directory of ``files`` captures holding ``packets`` in all (cached)."""
    import ingest as ingest_bench  # bench/ingest.py: the replay with rewritten hosts

    seed = seed_capture()
    digest = hashlib.sha1(seed.read_bytes()).hexdigest()[:10]
    stem = f"pipeline-{replay}-{digest}-{packets}"
    directory = DATA / f"{stem}x{files}"
    if directory.exists():
        return directory
    whole = DATA / f"{stem}.pcap"
    print(f"building {packets:,} packets ({replay} replay of {seed.name}) -> {directory}",
          flush=True)
    if replay == "shift":
        shifted_replay(seed, packets, whole)
    else:
        ingest_bench.build_capture(ingest_bench.parse_seed(seed, None), packets, whole)
    tmp = DATA / f".{directory.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    subprocess.run(["editcap", "-F", "pcap", "-c", str(-(-packets // files)), str(whole),
                    str(tmp / "part.pcap")], check=True, capture_output=True, timeout=600)
    os.replace(tmp, directory)
    whole.unlink()
    return directory


# -- the JSON path ------------------------------------------------------------------------

def tshark_json_zstd(capture: Path, archive: Path) -> None:
    """``tshark -n -r capture -T json | zstd -3 > archive``."""
    with open(archive, "wb") as sink, tempfile.TemporaryFile() as err:
        tshark = subprocess.Popen(["tshark", "-n", "-r", str(capture), "-T", "json"],
                                  stdout=subprocess.PIPE, stderr=err)
        zstd = subprocess.run(["zstd", "-3", "-q", "-c"], stdin=tshark.stdout, stdout=sink)
        tshark.stdout.close()
        if tshark.wait() or zstd.returncode:
            err.seek(0)
            raise RuntimeError(f"tshark | zstd failed on {capture}: "
                               f"{err.read().decode(errors='replace')[-300:]}")


def convert_all(captures: list[Path], archives: Path, jobs: int) -> None:
    archives.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(jobs) as pool:
        done = [pool.submit(tshark_json_zstd, c, archives / f"{c.stem}.json.zst")
                for c in captures]
        for future in done:
            future.result()


def json_packets(spark, archives: Path):
    """The archives as a DataFrame of the packet columns the features read."""
    from pyspark.sql import functions as F

    layers = "_source.layers"

    def field(layer: str, name: str):
        return F.col(f"{layers}.{layer}.`{name}`")

    epoch = F.split(field("frame", "frame.time_epoch"), r"\.")
    nanos = F.rpad(F.coalesce(epoch.getItem(1), F.lit("")), 9, "0").cast("bigint")
    frame = spark.read.schema(TSHARK_SCHEMA).option("multiLine", True).json(str(archives))
    return frame.select(
        (epoch.getItem(0).cast("bigint") * F.lit(1_000_000_000) + nanos).alias("ts"),
        F.coalesce(field("ip", "ip.src"), field("ipv6", "ipv6.src")).alias("src"),
        F.coalesce(field("ip", "ip.dst"), field("ipv6", "ipv6.dst")).alias("dst"),
        F.coalesce(field("ip", "ip.proto"),
                   F.col(f"{layers}.ipv6.`ipv6.hopopts`.`ipv6.hopopts.nxt`"),
                   field("ipv6", "ipv6.nxt")).cast("int").alias("proto"),
        F.coalesce(field("tcp", "tcp.srcport"), field("udp", "udp.srcport"))
        .cast("int").alias("sport"),
        F.coalesce(field("tcp", "tcp.dstport"), field("udp", "udp.dstport"))
        .cast("int").alias("dport"),
        F.coalesce(field("ip", "ip.ttl"), field("ipv6", "ipv6.hlim")).cast("int").alias("ttl"),
        field("frame", "frame.len").cast("bigint").alias("wire_len"),
        F.conv(F.substring(field("tcp", "tcp.flags"), 3, 8), 16, 10).cast("int")
        .alias("tcp_flags"),
        field("tcp", "tcp.window_size_value").cast("int").alias("tcp_window"),
    )


def write_features(packets, out: Path) -> None:
    from netsift.features import FeatureSpec, spark_engine
    from netsift.features.spec import NODE, WINDOW_START

    spark_engine.compute(packets, FeatureSpec()).orderBy(WINDOW_START, NODE).write \
        .mode("overwrite").option("compression", "zstd").parquet(str(out))


def json_path(spark, captures: list[Path], scratch: Path, jobs: int) -> dict:
    archives, out = scratch / "archives", scratch / "json-features"
    _, convert, _ = measure(lambda: convert_all(captures, archives, jobs))
    _, features, _ = measure(lambda: write_features(json_packets(spark, archives), out))
    stored = sum(p.stat().st_size for p in archives.iterdir())
    return {"seconds": convert + features, "convert_seconds": convert,
            "features_seconds": features, "bytes": stored, "features": str(out)}


# -- the netsift path ---------------------------------------------------------------------

def netsift_path(spark, captures: Path, scratch: Path) -> dict:
    from netsift import store
    from netsift.features import spark_engine
    from netsift.ingest.spark_ingest import spark_ingest

    dataset, out = scratch / "packets", scratch / "netsift-features"

    def run_ingest():
        report = spark_ingest([str(captures)], dataset, spark=spark)
        if report.failed or not report.packets:
            raise RuntimeError(f"netsift ingest failed: {report.failed}")
        return report

    report, ingest_s, _ = measure(run_ingest)
    _, features, _ = measure(lambda: write_features(
        spark_engine.read_packets(spark, dataset), out))
    stored = sum(os.path.getsize(f) for f in store.dataset_files(dataset))
    return {"seconds": ingest_s + features, "ingest_seconds": ingest_s,
            "features_seconds": features, "bytes": stored, "packets": report.packets,
            "features": str(out)}


# -- checking both computed the same ------------------------------------------------------

def agreement(json_out: str, netsift_out: str) -> tuple[int, int]:
    """(host-windows equal in both tables, host-windows in netsift's table)."""
    import polars as pl

    from netsift.schema import address_from_text

    theirs = pl.read_parquet(f"{json_out}/*.parquet")
    ours = pl.read_parquet(f"{netsift_out}/*.parquet")
    theirs = theirs.with_columns(pl.col("node").map_elements(address_from_text,
                                                             return_dtype=pl.Binary))
    joined = ours.join(theirs, on=["node", "window_start"], how="inner", suffix="_json")
    same = pl.lit(True)
    for name in ours.columns:
        if name in ("node", "window_start"):
            continue
        a, b = pl.col(name), pl.col(f"{name}_json")
        if ours[name].dtype.is_float():
            close = ((a - b).abs() <= 1e-9 * b.abs()) | (a.is_nan() & b.is_nan())
            same = same & ((a.is_null() & b.is_null()) | close.fill_null(False))
        else:
            same = same & a.eq_missing(b)
    return int(joined.select(same.sum()).item()), ours.height


# -- main ---------------------------------------------------------------------------------

def seed_storage(seed: Path, scratch: Path) -> dict:
    """Bytes of the seed as captured, one file each way: tshark JSON | zstd, and the
    Parquet dataset (the embedded ingest writes the same file as the Spark one)."""
    from netsift import store
    from netsift.ingest.job import ingest

    tshark_json_zstd(seed, scratch / "seed.json.zst")
    report = ingest([str(seed)], scratch / "seed-packets", jobs=1)
    return {"packets": report.packets, "pcap_bytes": seed.stat().st_size,
            "json_zstd_bytes": (scratch / "seed.json.zst").stat().st_size,
            "parquet_bytes": sum(os.path.getsize(f)
                                 for f in store.dataset_files(scratch / "seed-packets"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--packets", type=float, default=3_000_000,
                        help="packets in the capture set (default 3e6; tshark -T json "
                             "manages about 5-12 k packets/s per core)")
    parser.add_argument("--files", type=int, default=8, help="capture files (default 8)")
    parser.add_argument("--replay", choices=("shift", "hosts"), default="shift",
                        help="shift: the LAN's own hosts, copies shifted in time "
                             "(default); hosts: bench/ingest.py's replay, new hosts per "
                             "copy and conversation")
    parser.add_argument("--workers", type=int, default=2, help="Spark workers (default 2)")
    parser.add_argument("--worker-cores", type=int,
                        default=max(1, (os.cpu_count() or 2) // 2),
                        help="cores per worker (default: half the machine's each)")
    parser.add_argument("--executor-memory", default="1g")
    parser.add_argument("--json", metavar="OUT", help="write results as JSON here")
    args = parser.parse_args(argv)
    args.packets = int(args.packets)
    for tool in ("tshark", "zstd", "editcap", "java"):
        if shutil.which(tool) is None:
            raise SystemExit(f"this benchmark needs `{tool}`")

    from netsift.platform.spark import LocalCluster, get_session

    directory = capture_set(args.replay, args.packets, args.files)
    seed = seed_capture()
    captures = sorted(directory.glob("*.pcap"))
    pcap_bytes = sum(p.stat().st_size for p in captures)
    for capture in captures:
        warm_page_cache(capture)
    print(f"captures: {len(captures)} files, {args.packets:,} packets, "
          f"{pcap_bytes / 1e6:.0f} MB pcap ({directory.name})", flush=True)
    jobs = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=DATA, prefix=".pipeline-") as tmp, \
            LocalCluster(cores=args.worker_cores, memory="2g", workers=args.workers,
                         log_dir=Path(tmp) / "spark-logs") as cluster, \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas",
                                FutureWarning)
        scratch = Path(tmp)
        as_captured = seed_storage(seed, scratch)
        spark = get_session(cluster.master_url, app_name="netsift-bench-pipeline",
                            conf={"spark.executor.memory": args.executor_memory})
        print(f"cluster: {cluster.master_url}, {args.workers} workers x "
              f"{args.worker_cores} cores", flush=True)
        # Warm-up on the seed in a few parts, so every executor starts its Python worker.
        warm = scratch / "warm"
        (warm / "captures").mkdir(parents=True)
        parts = 2 * args.workers * args.worker_cores
        subprocess.run(["editcap", "-F", "pcap", "-c",
                        str(-(-as_captured["packets"] // parts)), str(seed),
                        str(warm / "captures" / "seed.pcap")], check=True,
                       capture_output=True, timeout=60)
        json_path(spark, sorted((warm / "captures").glob("*.pcap")), warm, jobs)
        netsift_path(spark, warm / "captures", warm)

        theirs = json_path(spark, captures, scratch, jobs)
        print(f"  JSON path     {theirs['seconds']:8.1f} s", flush=True)
        ours = netsift_path(spark, directory, scratch)
        print(f"  netsift path  {ours['seconds']:8.1f} s", flush=True)
        if ours["packets"] != args.packets:
            raise SystemExit(f"netsift ingested {ours['packets']:,} of {args.packets:,} packets")
        equal, rows = agreement(theirs["features"], ours["features"])
        spark.stop()

    speedup = theirs["seconds"] / ours["seconds"]
    smaller = theirs["bytes"] / ours["bytes"]
    seed_smaller = as_captured["json_zstd_bytes"] / as_captured["parquet_bytes"]
    n, seed_n = args.packets, as_captured["packets"]
    print()
    print(format_table(["path", "stage", "seconds"], [
        ["JSON", f"tshark -T json | zstd -3 ({jobs} at once)", theirs["convert_seconds"]],
        ["JSON", "Spark: read .json.zst, flatten, features", theirs["features_seconds"]],
        ["JSON", "end to end", theirs["seconds"]],
        ["netsift", "netsift ingest --engine spark", ours["ingest_seconds"]],
        ["netsift", "Spark: read Parquet, features", ours["features_seconds"]],
        ["netsift", "end to end", ours["seconds"]],
    ]))
    print()
    print(format_table(["stored as", "bytes", "bytes/packet", "seed as captured: bytes/packet"], [
        ["pcap (input)", pcap_bytes, pcap_bytes / n, as_captured["pcap_bytes"] / seed_n],
        ["tshark -T json | zstd -3", theirs["bytes"], theirs["bytes"] / n,
         as_captured["json_zstd_bytes"] / seed_n],
        ["netsift Parquet", ours["bytes"], ours["bytes"] / n,
         as_captured["parquet_bytes"] / seed_n],
    ]))
    print()
    print(f"netsift vs JSON: {speedup:.1f}x faster end to end (target >= {TARGET_SPEEDUP:.0f}x: "
          f"{verdict(speedup >= TARGET_SPEEDUP)}), {smaller:.1f}x smaller "
          f"(target >= {TARGET_SMALLER:.0f}x: {verdict(smaller >= TARGET_SMALLER)}); "
          f"the seed as captured (one file, no repeats for zstd to find): "
          f"{seed_smaller:.1f}x smaller")
    print(f"feature tables agree on {equal:,} of {rows:,} host-windows")
    if args.json:
        write_json(Path(args.json), {
            "machine": machine(), "replay": args.replay, "packets": n,
            "files": len(captures), "pcap_bytes": pcap_bytes, "workers": args.workers,
            "worker_cores": args.worker_cores, "tshark": command_version(["tshark", "-v"]),
            "json_path": theirs, "netsift_path": ours, "speedup": speedup,
            "storage_ratio": smaller, "seed_as_captured": as_captured,
            "seed_storage_ratio": seed_smaller, "host_windows": rows,
            "host_windows_equal": equal,
            "targets": {"speedup": TARGET_SPEEDUP, "storage_ratio": TARGET_SMALLER}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
