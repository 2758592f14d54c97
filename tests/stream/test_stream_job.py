"""Stream mode end to end on real captures: parity with batch, SIGKILL and restart, SIGTERM."""

from __future__ import annotations

import gzip
import json
import random
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

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "lan.pcap.gz"
WINDOW = "2s"
WINDOW_NS = 2_000_000_000


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "lan.pcap"
    path.write_bytes(gzip.decompress(SAMPLE.read_bytes()))
    return path


def make_spool(capture: Path, spool: Path, packets_per_file: int) -> list[Path]:
    """Rotated files as dumpcap/tcpdump -C would leave them (editcap -c splits)."""
    spool.mkdir()
    subprocess.run(["editcap", "-c", str(packets_per_file), str(capture),
                    str(spool / "rot.pcap")], check=True)
    return sorted(spool.iterdir())


def stream_features(out: Path) -> pl.DataFrame:
    parts = sorted((out / "features").glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    return pl.from_arrow(table).sort("window_start", "node")


def batch_features(capture: Path) -> pl.DataFrame:
    table = compute_features(netsift.read_table(capture), FeatureSpec(window_ns=WINDOW_NS))
    return pl.from_arrow(table).sort("window_start", "node")


def run_stream(spool: Path, out: Path, *extra: str, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "netsift.cli", "stream", "--spool", str(spool), "--out",
           str(out), "--window", WINDOW, "--lateness", "1s", "--quiet", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_stream_over_spool_equals_batch(capture, tmp_path):
    make_spool(capture, tmp_path / "spool", 300)
    proc = run_stream(tmp_path / "spool", tmp_path / "out", "--drain")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_same_frames(stream_features(tmp_path / "out"), batch_features(capture))
    metrics = (tmp_path / "out" / "metrics.prom").read_text()
    assert "netsift_stream_late_packets_total 0" in metrics


def files_done(out: Path) -> int:
    try:
        return len(json.loads((out / "_checkpoint" / "state.json").read_text())["files_done"])
    except (OSError, ValueError, KeyError):
        return 0  # not written yet, or being replaced


def test_sigkill_at_random_moments_loses_and_repeats_nothing(capture, tmp_path):
    """Each run is killed at a random moment after it has checkpointed a file of its own
    (so every kill lands mid-run, whatever the machine's speed); the last run completes."""
    files = make_spool(capture, tmp_path / "spool", 60)
    out = tmp_path / "out"
    rng = random.Random(7)
    kills = 0
    while kills < 3:
        before = files_done(out)
        proc = run_stream(tmp_path / "spool", out, "--drain")
        deadline = time.monotonic() + 120
        while proc.poll() is None and files_done(out) == before:
            assert time.monotonic() < deadline, "the stream made no progress"
            time.sleep(0.005)
        if proc.poll() is not None:
            break  # finished before a kill could land
        time.sleep(rng.uniform(0.0, 0.02))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
    assert kills >= 1, "no kill landed mid-run; the test proved nothing"
    proc = run_stream(tmp_path / "spool", out, "--drain")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert files_done(out) == len(files)
    assert_same_frames(stream_features(out), batch_features(capture))


def test_sigterm_stops_gracefully_and_resume_completes(capture, tmp_path):
    spool = tmp_path / "spool"
    files = make_spool(capture, spool, 200)
    hidden = [f.rename(f.with_name("_" + f.name)) for f in files[3:]]  # not yet "arrived"
    proc = run_stream(spool, tmp_path / "out", "--settle", "10ms")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and files_done(tmp_path / "out") != 3:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert files_done(tmp_path / "out") == 3
    for f in hidden:
        f.rename(f.with_name(f.name[1:]))
    proc = run_stream(spool, tmp_path / "out", "--drain")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_same_frames(stream_features(tmp_path / "out"), batch_features(capture))


def test_missing_spool_is_one_line_error(tmp_path):
    proc = run_stream(tmp_path / "nope", tmp_path / "out", "--drain")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.decode().strip() == f"netsift: error: {tmp_path / 'nope'}: spool directory " \
                                   "does not exist"


def test_missing_interface_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "netsift.cli", "stream", "--interface",
                           "nosuch0", "--out", str(tmp_path / "out")], capture_output=True,
                          timeout=120)
    assert proc.returncode == 1
    err = proc.stderr.decode().strip()
    assert err.startswith("netsift: error: nosuch0: no such network interface (have: ")
    assert "\n" not in err
