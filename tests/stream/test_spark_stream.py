"""Spark Structured Streaming mode on a real standalone cluster: equal to batch, restarts
lose and repeat nothing, late packets and unreadable files counted, scoring as in batch."""

from __future__ import annotations

import gzip
import ipaddress
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from frames import assert_same_frames

import netsift
from netsift import pipeline
from netsift.cli import main
from netsift.features import FeatureSpec, compute_features, read_features
from netsift.stream.spark_stream import SparkStreamConfig, SparkStreamJob

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "lan.pcap.gz"
S = 1_000_000_000
WINDOW_NS, LATENESS_NS = 2 * S, 1 * S  # the 12.8 s sample spans 7 windows
SCANNER = ipaddress.IPv6Address("::ffff:10.77.0.66").packed  # nmap in samples/lan.pcap.gz


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "lan.pcap"
    path.write_bytes(gzip.decompress(SAMPLE.read_bytes()))
    return path


def make_spool(capture: Path, spool: Path, packets_per_file: int) -> list[Path]:
    """Rotated captures (editcap -c), modification times one second apart, oldest first."""
    spool.mkdir()
    subprocess.run(["editcap", "-c", str(packets_per_file), str(capture),
                    str(spool / "rot.pcap")], check=True)
    files = sorted(spool.iterdir())
    base = time.time() - 3600
    for i, path in enumerate(files):
        os.utime(path, (base + i, base + i))
    return files


def config(spool: Path, out: Path, **kwargs) -> SparkStreamConfig:
    return SparkStreamConfig(spool=spool, out=out, window_ns=WINDOW_NS,
                             lateness_ns=LATENESS_NS, settle_s=0.01, poll_s=0.2, **kwargs)


def batch_features(captures: list[Path], node: str = "src") -> pl.DataFrame:
    """``netsift features`` (Polars) over the packets of ``captures``."""
    table = pa.concat_tables([netsift.read_table(c) for c in captures])
    spec = FeatureSpec(window_ns=WINDOW_NS, node=node)
    return pl.from_arrow(compute_features(table, spec)).sort("window_start", "node")


def stream_features(out: Path) -> pl.DataFrame:
    return pl.from_arrow(read_features(out / "features")).sort("window_start", "node")


def state(out: Path) -> dict:
    return json.loads((out / "_checkpoint_spark" / "state.json").read_text())


@pytest.mark.spark
def test_drain_equals_batch(spark, capture, tmp_path):
    files = make_spool(capture, tmp_path / "spool", 800)
    assert len(files) == 3
    stats = SparkStreamJob(config(tmp_path / "spool", tmp_path / "out", drain=True),
                           spark).run()
    assert_same_frames(stream_features(tmp_path / "out"), batch_features(files))
    assert stats.batches == 3 and stats.late == 0 and stats.packets == 2295
    assert stats.emitted >= 3  # windows closed batch by batch, not only at the end
    assert stats.files_done == [f.name for f in files]
    assert "netsift_stream_late_packets_total 0" in \
        (tmp_path / "out" / "metrics.prom").read_text()
    # Closed windows' staged packets are gone; only the checkpoint's bookkeeping stays.
    assert not list((tmp_path / "out" / "_checkpoint_spark" / "buffer").iterdir())


@pytest.mark.spark
def test_restart_continues_without_loss_or_duplicates(spark, capture, tmp_path, monkeypatch):
    spool, out = tmp_path / "spool", tmp_path / "out"
    files = make_spool(capture, spool, 600)
    assert len(files) == 4
    hidden = [f.rename(f.with_name("_" + f.name)) for f in files[2:]]  # not yet arrived

    job = SparkStreamJob(config(spool, out, node="dst"), spark)
    runner = threading.Thread(target=job.run)
    runner.start()
    deadline = time.monotonic() + 120
    while job.stats.batches < 2 and time.monotonic() < deadline and runner.is_alive():
        time.sleep(0.2)
    job.stop()
    runner.join(timeout=120)
    assert not runner.is_alive() and job.stats.batches == 2
    first = state(out)
    assert first["closed_until"] <= first["max_ts"]  # the newest windows are still open
    # A crash after foreachBatch returned but before Spark committed: Spark replays the
    # batch, which the job's own state has already applied.
    commits = out / "_checkpoint_spark" / "query" / "commits"
    newest = max((p for p in commits.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    newest.unlink()
    (commits / f".{newest.name}.crc").unlink(missing_ok=True)

    base = time.time() - 1800
    for i, f in enumerate(hidden):
        moved = f.rename(f.with_name(f.name[1:]))
        os.utime(moved, (base + i, base + i))
    # A batch that fails after writing its features, before its checkpoint.
    save = SparkStreamJob._save

    def failing_save(job):
        if job.last_batch == 2:
            raise RuntimeError("killed before the checkpoint")
        save(job)

    monkeypatch.setattr(SparkStreamJob, "_save", failing_save)
    with pytest.raises(RuntimeError, match="killed before the checkpoint"):
        SparkStreamJob(config(spool, out, node="dst", drain=True), spark).run()
    monkeypatch.undo()
    emitted = state(out)["emitted"]
    assert state(out)["batch"] == 1 and emitted >= 1
    leftover = out / "features" / f"part-{emitted + 1:08d}.parquet"
    assert not leftover.exists()  # the failed batch took back what it wrote
    # What a SIGKILL at that moment would leave: an output the checkpoint does not know.
    shutil.copy(out / "features" / f"part-{emitted:08d}.parquet", leftover)

    stats = SparkStreamJob(config(spool, out, node="dst", drain=True), spark).run()
    assert_same_frames(stream_features(out), batch_features(files, node="dst"))
    assert stats.late == 0 and stats.packets == 2295 and stats.batches == 4
    assert stats.files_done == [f.name for f in files]


@pytest.mark.spark
def test_late_packets_and_unreadable_files_are_counted(spark, capture, tmp_path):
    spool, out = tmp_path / "spool", tmp_path / "out"
    files = make_spool(capture, spool, 800)
    # An old capture arriving last: its packets belong to windows closed long ago.
    old = spool / "zz-old.pcap"
    shutil.copy(files[0], old)
    os.utime(old, (time.time() - 60, time.time() - 60))
    # And a file that is no capture at all: reported as failed, the stream goes on.
    junk = spool / "rot_00001b.pcap"
    junk.write_bytes(b"not a capture\n" * 10)
    middle = files[1].stat().st_mtime + 0.5
    os.utime(junk, (middle, middle))
    stats = SparkStreamJob(config(spool, out, drain=True), spark).run()

    assert_same_frames(stream_features(out), batch_features(files))
    assert stats.failed_files == [str(junk)] and stats.batches == 5
    newest = max(pc.max(netsift.read_table(f).column("ts")).as_py() for f in files)
    closed_until = (newest - LATENESS_NS) // WINDOW_NS * WINDOW_NS
    old_ts = netsift.read_table(old).column("ts")
    late = pc.sum(pc.less(old_ts, closed_until)).as_py()
    assert late == len(old_ts) > 0  # the whole file is late
    assert stats.late == late and state(out)["late"] == late
    assert f"netsift_stream_late_packets_total {late}" in (out / "metrics.prom").read_text()
    assert json.loads(stats.summary())["late_packets"] == late


@pytest.mark.spark
def test_model_scores_closed_windows_like_batch(spark, capture, tmp_path):
    files = make_spool(capture, tmp_path / "spool", 800)
    spec = FeatureSpec(window_ns=WINDOW_NS)
    features = compute_features(netsift.read_table(capture), spec)
    # Fitted without the scanner's windows, so the stream has something to alert on.
    benign = features.filter(pc.not_equal(features.column("node"), SCANNER))
    model = pipeline.new_detector("meanshift").fit(benign, [f.name for f in spec.features]) \
        .save(tmp_path / "model.npz")
    want_scores, want_alerts = pipeline.load_scorer(model, spec)(features)
    assert want_alerts
    stats = SparkStreamJob(config(tmp_path / "spool", tmp_path / "out", drain=True,
                                  model=model), spark).run()

    assert_same_frames(stream_features(tmp_path / "out"), batch_features(files))
    got = pl.from_arrow(read_features(tmp_path / "out" / "scores")) \
        .sort("window_start", "node")
    want = pl.from_arrow(want_scores).sort("window_start", "node")
    assert got.select("node", "window_start").equals(want.select("node", "window_start"))
    assert abs(got["score"].to_numpy() - want["score"].to_numpy()).max() <= 1e-9
    lines = (tmp_path / "out" / "alerts.jsonl").read_text().splitlines()
    alerted = sorted((a["window_start_ns"], a["node"]) for a in map(json.loads, lines))
    assert alerted == sorted((a["window_start_ns"], a["node"]) for a in want_alerts)
    assert stats.alerts == len(want_alerts)


def test_cli_missing_spool_is_one_line_error(tmp_path, capsys):
    code = main(["stream", "--engine", "spark", "--spool", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "out"), "--drain", "--quiet"])
    assert code == 1
    assert capsys.readouterr().err.strip() == \
        f"netsift: error: {tmp_path / 'nope'}: spool directory does not exist"
