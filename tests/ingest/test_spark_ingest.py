"""``netsift ingest --engine spark`` on a real standalone cluster (one master, two workers):
the dataset equals the embedded ingest's, splits included, for a tree of mixed formats."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from frames import assert_same_frames

from netsift import read_table, store
from netsift.cli import main
from netsift.features import compute_features
from netsift.ingest.job import ingest
from netsift.ingest.spark_ingest import spark_ingest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "lan.pcap.gz"
TOOLS = ("editcap", "mergecap", "tshark", "zstd", "java")
SPLIT_BYTES = 64 * 1024  # the 530 kB three-hour captures read in 9 splits


def _run(*argv: str, stdout=None) -> None:
    subprocess.run(argv, check=True, stdout=stdout, stderr=subprocess.DEVNULL, timeout=120)


def _damage(path: Path, target: Path, record: int) -> None:
    """A copy of a little-endian pcap whose ``record``-th record claims an impossible length."""
    data = bytearray(path.read_bytes())
    pos = 24
    for _ in range(record - 1):
        pos += 16 + int.from_bytes(data[pos + 8:pos + 12], "little")
    data[pos + 8:pos + 12] = (0xFFFFFF00).to_bytes(4, "little")
    target.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Captures made from samples/lan.pcap.gz (tcpdump on a LAN) by editcap, mergecap,
    tshark, gzip and zstd: many small files and some large ones in every input format,
    and some bad inputs."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    pytest.importorskip("pyspark")
    scratch = tmp_path_factory.mktemp("scratch")
    root = tmp_path_factory.mktemp("tree")
    lan = scratch / "lan.pcap"
    lan.write_bytes(gzip.decompress(SAMPLE.read_bytes()))

    small = root / "small"
    small.mkdir()
    _run("editcap", "-F", "pcap", "-c", "300", str(lan), str(scratch / "part.pcap"))
    parts = sorted(scratch.glob("part_*.pcap"))
    assert len(parts) == 8
    _run("editcap", "-F", "pcapng", str(parts[1]), str(small / "p1.pcapng"))
    with open(small / "p2.pcap.gz", "wb") as sink:
        sink.write(gzip.compress(parts[2].read_bytes()))
    _run("editcap", "-F", "pcapng", str(parts[3]), str(scratch / "p3.pcapng"))
    _run("zstd", "-q", str(scratch / "p3.pcapng"), "-o", str(small / "p3.pcapng.zst"))
    for i, fmt in ((4, "json"), (5, "ek")):  # as docs/schema.md says to export
        text = scratch / f"p{i}.{fmt}"
        with open(text, "wb") as sink:
            _run("tshark", "-n", "-r", str(parts[i]), "-T", fmt, "-o", "ip.defragment:FALSE",
                 "-o", "ipv6.defragment:FALSE", stdout=sink)
        _run("zstd", "-q", str(text), "-o", str(small / f"p{i}.{fmt}.json.zst"))
    for i in (0, 6, 7):
        shutil.copy(parts[i], small / f"p{i}.pcap")

    large = root / "large"
    large.mkdir()
    shifted = []
    for hours in (1, 2):
        shifted.append(scratch / f"lan+{hours}h.pcap")
        _run("editcap", "-F", "pcap", "-t", str(3600 * hours), str(lan), str(shifted[-1]))
    hours = large / "hours.pcap"
    _run("mergecap", "-F", "pcap", "-a", "-w", str(hours), str(lan), *map(str, shifted))
    _run("editcap", "-F", "nsecpcap", str(hours), str(large / "hours-nsec.pcap"))
    _run("editcap", "-F", "pcapng", str(hours), str(scratch / "hours.pcapng"))
    with open(large / "hours.pcapng.gz", "wb") as sink:
        sink.write(gzip.compress((scratch / "hours.pcapng").read_bytes()))

    bad = root / "bad"
    bad.mkdir()
    _damage(hours, bad / "damaged.pcap", record=3000)  # resynchronised: read whole
    _run("editcap", "-F", "pcap", "-T", "user0", str(parts[0]), str(bad / "user0.pcap"))
    whole = gzip.compress(parts[0].read_bytes())
    (bad / "cut.pcap.gz").write_bytes(whole[:len(whole) * 2 // 3])
    (bad / "notes.txt").write_text("not a capture\n")
    (bad / "empty.pcap").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def spark_cluster(tree, tmp_path_factory):
    """One master and two workers (2 cores each: room for a spark-submit beside the tests)."""
    from netsift.platform.spark import LocalCluster

    with LocalCluster(cores=2, memory="2g", workers=2,
                      log_dir=tmp_path_factory.mktemp("spark-ingest-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def spark(spark_cluster):
    """A session with one single-core executor on each worker."""
    from netsift.platform.spark import get_session

    session = get_session(spark_cluster.master_url, app_name="netsift-ingest-tests",
                          conf={"spark.executor.memory": "768m", "spark.executor.cores": "1",
                                "spark.cores.max": "2", "spark.sql.shuffle.partitions": "2"})
    yield session
    session.stop()


@pytest.fixture(scope="module")
def embedded(tree, tmp_path_factory):
    """The tree ingested by the embedded engine: (report, dataset directory)."""
    out = tmp_path_factory.mktemp("embedded") / "packets"
    return ingest([str(tree)], out, jobs=1), out


@pytest.fixture(scope="module")
def distributed(tree, spark, tmp_path_factory):
    """The tree ingested on the cluster: (report, dataset directory)."""
    out = tmp_path_factory.mktemp("spark") / "packets"
    return spark_ingest([str(tree)], out, spark=spark, split_bytes=SPLIT_BYTES), out


def test_split_ranges_read_as_the_whole_capture(tree):
    """Without Spark: the ranges job 1 finds tile the records, and read one by one they
    give the sequential reader's rows; files that cannot be split say so."""
    from netsift.ingest.pcap_split import RangeIndex, check_ranges, index_range
    from netsift.ingest.spark_ingest import CaptureTask

    def ranges(path: Path, split: int) -> list:
        size = path.stat().st_size
        return [index_range(path, k * split, min((k + 1) * split, size))
                for k in range(-(-size // split))]

    for name in ("hours.pcap", "hours-nsec.pcap"):
        path = tree / "large" / name
        want = read_table(path)
        for split in (1000, 65536, 400_000):  # 1000: some ranges hold no record start
            indexes = ranges(path, split)
            assert check_ranges(path.stat().st_size, indexes), (name, split)
            batches, base = [], 0
            for index in indexes:
                task = CaptureTask(str(path), start=index.first, stop=index.end,
                                   record_base=base, batch_rows=4096)
                batches += list(task.batches())
                assert task.reader.stats.packets == index.records
                assert not task.reader.stats.skipped
                base += index.records
            assert pa.Table.from_batches(batches).equals(want)
    damaged = tree / "bad" / "damaged.pcap"
    assert not check_ranges(damaged.stat().st_size, ranges(damaged, SPLIT_BYTES))
    for name in ("hours.pcapng.gz", "../small/p1.pcapng", "../small/p4.json.json.zst"):
        assert index_range(tree / "large" / name, 0, 1 << 20) is None
    good = [RangeIndex(24, 100, 3, True), RangeIndex(100, 180, 2, True)]
    assert check_ranges(180, good)
    assert not check_ranges(180, [good[0], RangeIndex(104, 180, 2, True)])  # disagree
    assert not check_ranges(200, good)  # does not reach the end
    assert not check_ranges(180, [good[0], RangeIndex(100, 180, 2, False)])


def packet_rows(root: Path) -> pa.Table:
    table = store.read_dataset(root)
    i = table.schema.get_field_index("source")
    table = table.set_column(i, "source", table.column(i).cast(pa.string()))
    return table.sort_by([("source", "ascending"), ("record", "ascending")])


def outcomes(report) -> dict:
    return {r.path: (r.status, r.packets, r.skipped, r.format, r.error) for r in report.results}


def manifest_entries(root: Path) -> dict:
    return {path: {k: v for k, v in entry.items() if k not in ("files", "ingested_at")}
            for path, entry in store.Manifest.load(root).inputs.items()}


def partitions(root: Path) -> set[str]:
    return {str(Path(f).parent.relative_to(root)) for f in store.dataset_files(root)}


def assert_same_rows(root: Path, want: Path) -> None:
    got, expected = packet_rows(root), packet_rows(want)
    assert got.num_rows == expected.num_rows > 0
    assert got.schema == expected.schema  # unsigned types and 16-byte addresses kept
    assert got.equals(expected)


@pytest.mark.spark
def test_dataset_equals_the_embedded_ingest(tree, spark, embedded, distributed):
    (want, want_dir), (got, got_dir) = embedded, distributed
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
    assert executors == 2  # one per worker
    assert outcomes(got) == outcomes(want)
    statuses = {Path(p).name: r[0] for p, r in outcomes(got).items()}
    assert statuses == {**{n: "ingested" for n in (
        "p0.pcap", "p1.pcapng", "p2.pcap.gz", "p3.pcapng.zst", "p4.json.json.zst",
        "p5.ek.json.zst", "p6.pcap", "p7.pcap", "hours.pcap", "hours-nsec.pcap",
        "hours.pcapng.gz", "damaged.pcap", "cut.pcap.gz")},
        "user0.pcap": "failed", "notes.txt": "not-a-capture", "empty.pcap": "not-a-capture"}
    assert_same_rows(got_dir, want_dir)
    assert partitions(got_dir) == partitions(want_dir) and len(partitions(got_dir)) == 3
    assert manifest_entries(got_dir) == manifest_entries(want_dir)

    files = {Path(p).name: e["files"] for p, e in store.Manifest.load(got_dir).inputs.items()}
    want_files = {Path(p).name: e["files"]
                  for p, e in store.Manifest.load(want_dir).inputs.items()}
    for name in ("hours.pcap", "hours-nsec.pcap"):  # split: a file per split and hour
        assert len(files[name]) >= 9
        assert all(re.search(r"-\d{4}\.parquet$", f) for f in files[name])
    for name in ("damaged.pcap", "hours.pcapng.gz", "p0.pcap", "p4.json.json.zst"):
        assert files[name] == want_files[name]  # read whole: the embedded ingest's files
    skipped = {Path(r.path).name: r.skipped for r in got.results if r.skipped}
    assert set(skipped) == {"damaged.pcap", "cut.pcap.gz"}


@pytest.mark.spark
def test_features_equal_between_engines_and_ingests(spark, embedded, distributed):
    def features(root: Path, engine: str) -> pl.DataFrame:
        table = compute_features(root, engine=engine, spark=spark)
        return pl.from_arrow(table).sort("window_start", "node")

    want = features(embedded[1], "polars")
    assert_same_frames(features(distributed[1], "polars"), want)
    assert_same_frames(features(distributed[1], "spark"), want)


@pytest.mark.spark
def test_rerun_skips_unchanged_and_rereads_changed(tree, spark, embedded, tmp_path):
    out = tmp_path / "packets"
    first = spark_ingest([str(tree / "large")], out, spark=spark, split_bytes=SPLIT_BYTES)
    assert first.count("ingested") == 3
    again = spark_ingest([str(tree / "large")], out, spark=spark, split_bytes=SPLIT_BYTES)
    assert again.count("current") == 3 and again.packets == 0
    changed = tree / "large" / "hours.pcap"
    before = store.Manifest.load(out).inputs[os.path.realpath(changed)]["files"]
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    # Now read whole (one larger split size): the old split files must go.
    third = spark_ingest([str(tree / "large")], out, spark=spark, split_bytes=1 << 30)
    assert third.count("current") == 2 and third.count("ingested") == 1
    after = store.Manifest.load(out).inputs[os.path.realpath(changed)]["files"]
    assert len(after) == 3 and not set(before) & set(after)
    assert not any((out / f).exists() for f in before)
    want = packet_rows(embedded[1])
    assert packet_rows(out).equals(want.filter(pc.match_substring(want["source"], "/large/")))


@pytest.mark.spark
def test_cli(tree, spark_cluster, spark, embedded, tmp_path, capsys):
    out = tmp_path / "packets"
    code = main(["ingest", "--engine", "spark", "--master", spark_cluster.master_url,
                 str(tree), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1  # user0.pcap failed; the rest ingested
    assert "Traceback" not in captured.err
    assert f"netsift: error: {tree / 'bad' / 'user0.pcap'}: link type 147 is not supported" \
        in captured.err
    assert f"netsift: warning: {tree / 'bad' / 'cut.pcap.gz'}: 1 compressed input" in captured.err
    summary = captured.out.strip().splitlines()[-1]
    assert re.fullmatch(rf"13 ingested, 2 not captures, 1 failed: {embedded[0].packets:,} "
                        rf"packets in [\d.]+ s \([\d,]+ packets/s\) -> {re.escape(str(out))} "
                        rf"\([\d.]+ KiB\)", summary), summary
    assert_same_rows(out, embedded[1])

    assert main(["ingest", "--master", "local[1]", str(tree), "--out", str(out)]) == 1
    assert main(["ingest", "--engine", "spark", "-", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--master needs --engine spark" in err and "cannot read standard input" in err


@pytest.mark.spark
def test_spark_submit(tree, spark_cluster, spark, embedded, tmp_path):
    """deploy/spark/netsift_job.py under spark-submit: a second application on the cluster."""
    from netsift.platform.spark import spark_home

    out = tmp_path / "packets"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1")
    done = subprocess.run(
        ["bash", str(spark_home() / "bin" / "spark-submit"), "--master",
         spark_cluster.master_url, "--conf", "spark.cores.max=2", "--conf",
         "spark.executor.cores=1", "--conf", "spark.executor.memory=512m",
         str(REPO / "deploy" / "spark" / "netsift_job.py"), "ingest", "--engine", "spark",
         str(tree / "small"), "--out", str(out)],  # the session is spark-submit's
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("8 ingested: 2,295 packets in ")
    want = packet_rows(embedded[1])
    assert packet_rows(out).equals(want.filter(pc.match_substring(want["source"], "/small/")))


@pytest.mark.spark
def test_analyze_ingests_on_spark(tree, spark_cluster, spark, tmp_path):
    from netsift.pipeline import AnalyzeOptions, analyze

    options = AnalyzeOptions(engine="spark", master=spark_cluster.master_url,
                             detector="iforest", report=False)
    result = analyze([str(tree / "small")], tmp_path / "run", options)
    manifest = store.Manifest.load(tmp_path / "run" / "packets")
    assert len(manifest.inputs) == 8
    assert 0 < result.packets <= sum(e["packets"] for e in manifest.inputs.values()) == 2295
    assert (tmp_path / "run" / "features.parquet").exists()
