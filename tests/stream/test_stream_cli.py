"""``netsift stream`` from the command line: scoring with a model fitted by ``netsift
analyze`` equals batch scoring, late files are counted, errors are one line, status."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from frames import assert_same_frames

import netsift
from netsift.features import FeatureSpec, compute_features
from netsift.stream.runner import status_printer

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
LAB = SAMPLES / "lab" / "capture.pcap.xz"


def netsift_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netsift.cli", *args], capture_output=True,
                          timeout=timeout, **kwargs)


def split_capture(capture: Path, spool: Path, packets_per_file: int) -> list[Path]:
    """Rotated files as ``dumpcap -b``/``tcpdump -C`` leave them (editcap -c), modification
    times one second apart, oldest first."""
    spool.mkdir()
    subprocess.run(["editcap", "-c", str(packets_per_file), str(capture),
                    str(spool / "rot.pcapng")], check=True, capture_output=True, timeout=60)
    files = sorted(spool.iterdir())
    base = time.time() - 3600
    for i, path in enumerate(files):
        os.utime(path, (base + i, base + i))
    return files


def parts(out: Path, kind: str) -> pl.DataFrame:
    tables = [pq.read_table(p) for p in sorted((out / kind).glob("part-*.parquet"))]
    return pl.from_arrow(pa.concat_tables(tables))


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict[str, Path]:
    """The lab sample as pcapng, and ``netsift analyze --window 10s`` of it."""
    root = tmp_path_factory.mktemp("lab")
    capture = root / "capture.pcapng"
    capture.write_bytes(lzma.decompress(LAB.read_bytes()))
    done = netsift_cli("analyze", str(LAB), "--out", str(root / "A"), "--window", "10s",
                       "--no-report", "--quiet")
    assert done.returncode == 0, done.stderr.decode()
    return {"capture": capture, "analyze": root / "A"}


def test_stream_with_model_scores_as_batch(lab, tmp_path):
    split_capture(lab["capture"], tmp_path / "spool", 20000)
    analyzed = lab["analyze"]
    done = netsift_cli("stream", "--spool", str(tmp_path / "spool"), "--model",
                       str(analyzed / "model.npz"), "--window", "10s", "--drain", "--out",
                       str(tmp_path / "O"), "--quiet")
    assert done.returncode == 0, done.stderr.decode()

    batch = pl.from_arrow(pq.read_table(analyzed / "scores.parquet"))
    stream = parts(tmp_path / "O", "scores")
    assert stream.height == batch.height > 0
    joined = batch.join(stream, on=["node", "window_start"], suffix="_stream")
    assert joined.height == batch.height
    np.testing.assert_allclose(joined["score_stream"].to_numpy(), joined["score"].to_numpy(),
                               rtol=1e-9, atol=1e-12)
    assert (joined["alert"] == joined["alert_stream"]).all()

    def alerts(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    want, got = alerts(analyzed / "alerts.jsonl"), alerts(tmp_path / "O" / "alerts.jsonl")
    assert want and len(got) == len(want)
    assert {tuple(sorted(a)) for a in got} == {tuple(sorted(a)) for a in want}

    def key(alert: dict) -> tuple:
        return alert["window_start_ns"], alert["node"]

    by_key = {key(a): a for a in want}
    for alert in got:
        expected = by_key[key(alert)]
        assert alert["score"] == pytest.approx(expected["score"], rel=1e-9, abs=1e-6)
        assert [f["feature"] for f in alert["top_features"]] == \
            [f["feature"] for f in expected["top_features"]]
        assert {k: alert[k] for k in ("window_start", "window_end", "detector", "model")} == \
            {k: expected[k] for k in ("window_start", "window_end", "detector", "model")}


def test_late_file_is_counted_and_left_out(tmp_path):
    """The first third of a capture arrives last: its windows have closed, so each of its
    packets is late, counted, and absent from the features."""
    capture = tmp_path / "lan.pcap"
    capture.write_bytes(gzip.decompress((SAMPLES / "lan.pcap.gz").read_bytes()))
    total = netsift.read_table(capture).num_rows
    files = split_capture(capture, tmp_path / "spool", -(-total // 3))
    assert len(files) == 3
    newest = files[-1].stat().st_mtime + 1
    os.utime(files[0], (newest, newest))
    done = netsift_cli("stream", "--spool", str(tmp_path / "spool"), "--window", "2s",
                       "--lateness", "1s", "--drain", "--out", str(tmp_path / "O"))
    assert done.returncode == 0, done.stderr.decode()
    late = netsift.read_table(files[0]).num_rows
    assert json.loads(done.stdout.decode().splitlines()[-1])["late_packets"] == late
    metrics = (tmp_path / "O" / "metrics.prom").read_text()
    assert f"netsift_stream_late_packets_total {late}\n" in metrics

    spec = FeatureSpec(window_ns=2_000_000_000)
    on_time = pa.concat_tables([netsift.read_table(f) for f in files[1:]])
    want = pl.from_arrow(compute_features(on_time, spec)).sort("window_start", "node")
    got = parts(tmp_path / "O", "features").sort("window_start", "node")
    assert got.height == want.height > 0
    assert got["packets"].sum() == want["packets"].sum()
    assert got.select("node", "window_start").equals(want.select("node", "window_start"))


def test_window_featurised_early_is_redone_when_packets_follow(tmp_path):
    """A window is featurised once the newest packet is lateness/10 past its end; a file
    arriving out of order (within the lateness) adds packets to it: featurised again."""
    capture = tmp_path / "lan.pcap"
    capture.write_bytes(gzip.decompress((SAMPLES / "lan.pcap.gz").read_bytes()))
    spool = tmp_path / "spool"
    spool.mkdir()
    subprocess.run(["editcap", "-i", "1", str(capture), str(spool / "sec.pcap")],
                   check=True, capture_output=True, timeout=60)
    files = sorted(spool.iterdir())
    base = time.time() - 3600
    for i, path in enumerate(files):
        order = {5: 6, 6: 5}.get(i, i)  # the sixth second arrives after the seventh
        os.utime(path, (base + order, base + order))
    done = netsift_cli("stream", "--spool", str(spool), "--window", "2s", "--lateness",
                       "3s", "--drain", "--quiet", "--out", str(tmp_path / "O"))
    assert done.returncode == 0, done.stderr.decode()
    metrics = dict(line.split() for line in
                   (tmp_path / "O" / "metrics.prom").read_text().splitlines())
    assert metrics["netsift_stream_late_packets_total"] == "0"
    assert int(metrics["netsift_stream_early_stale_total"]) >= 1
    assert int(metrics["netsift_stream_early_windows_total"]) >= 1
    want = pl.from_arrow(compute_features(netsift.read_table(capture),
                                          FeatureSpec(window_ns=2_000_000_000)))
    # Another arrival order in the window: floats to summation order (1e-9 relative).
    assert_same_frames(parts(tmp_path / "O", "features").sort("window_start", "node"),
                want.sort("window_start", "node"))


def test_status_line_every_interval_off_a_terminal(tmp_path):
    stream = io.StringIO()
    show = status_printer(stream, interval=0.2)
    show("first")
    show("too soon")
    time.sleep(0.25)
    show("second")
    assert stream.getvalue() == "netsift stream: first\nnetsift stream: second\n"

    capture = tmp_path / "lan.pcap"
    capture.write_bytes(gzip.decompress((SAMPLES / "lan.pcap.gz").read_bytes()))
    split_capture(capture, tmp_path / "spool", 500)
    done = netsift_cli("stream", "--spool", str(tmp_path / "spool"), "--window", "2s",
                       "--drain", "--out", str(tmp_path / "O"))
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stderr.decode().splitlines()
    assert lines and all(re.fullmatch(
        r"netsift stream: [\d,]+ packets, \d+ windows open, [\d,]+ host-windows out, "
        r"lag ([\d.]+ s|-), \d+ alerts, \d+ late", line) for line in lines), lines
    assert json.loads(done.stdout.decode())["packets"] == netsift.read_table(capture).num_rows


@pytest.mark.parametrize("tool", ["dumpcap", "tcpdump"])
def test_missing_interface_is_one_line(tool, tmp_path):
    done = netsift_cli("stream", "--interface", "nosuchif0", "--capture-tool", tool,
                       "--out", str(tmp_path / "O"), timeout=120)
    assert done.returncode == 1
    err = done.stderr.decode()
    assert err.startswith("netsift: error: nosuchif0: no such network interface (have: ")
    assert err.count("\n") == 1


@pytest.mark.root
@pytest.mark.parametrize("tool", ["dumpcap", "tcpdump"])
def test_no_capture_privilege_is_one_line(tool):
    """netsift as an unprivileged user: the capture program it starts cannot capture."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which(tool) is None:
        pytest.skip(f"needs root, setpriv and {tool}")
    out = Path(tempfile.mkdtemp(prefix="netsift-nobody-"))  # not under a 0700 pytest dir
    try:
        out.chmod(0o777)
        done = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             "--inh-caps=-all", sys.executable, "-m", "netsift.cli", "stream",
             "--interface", "lo", "--capture-tool", tool, "--out", str(out / "O")],
            capture_output=True, timeout=120, env={**os.environ, "HOME": str(out),
                                                   "NUMBA_CACHE_DIR": str(out / "numba")})
    finally:
        shutil.rmtree(out, ignore_errors=True)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert re.fullmatch(rf"netsift: error: {tool}: no capture privilege \(.+\); run as "
                        rf"root or grant CAP_NET_RAW,CAP_NET_ADMIN to {tool}\n", err), err


@pytest.mark.parametrize("shards", [2, 3])
def test_featurising_in_node_shards_equals_one_call(lab, shards, monkeypatch):
    """The stream featurises a closed window in node shards, in parallel: same rows."""
    from netsift.stream import job
    from netsift.stream.windows import WindowBuffer

    monkeypatch.setattr(job, "SHARD_MIN_ROWS", 0)
    spec = FeatureSpec(window_ns=10_000_000_000)
    packets = netsift.read_table(lab["capture"])
    want = compute_features(packets, spec)  # also starts numba's threading layer
    if not job._threadsafe_kernels():
        pytest.skip("numba's threading layer runs one parallel kernel at a time")
    buffer = WindowBuffer(spec.window_ns, 0, spec.input_columns(), shard_key=spec.node,
                          shards=shards)
    for batch in packets.to_batches(max_chunksize=7000):
        buffer.add(batch)
    windows = buffer.flush_windows()
    assert all(w.rows == sum(p.num_rows for p in w.shards) for w in windows)
    assert max(len(w.shards) for w in windows) == shards
    featurize = job.sharded(lambda t: compute_features(t, spec), shards)
    got = pa.concat_tables([featurize(w.shards) for w in windows])
    assert got.equals(want)


def test_spool_names_reused_by_a_ring_buffer_are_new_files(tmp_path):
    """``tcpdump -C -W``/``-G -W`` rings rewrite old names: a name seen again with another
    modification time is read again; names gone from the spool are forgotten."""
    from netsift.stream.sources import completed_files

    spool = tmp_path / "spool"
    spool.mkdir()
    ring = [spool / "ring.pcap0", spool / "ring.pcap1"]
    for i, path in enumerate(ring):
        path.write_bytes(b"x")
        os.utime(path, ns=(10**18 + i, 10**18 + i))
    done = {}
    for path in completed_files(spool, done, settle=3600, drain=True, prune=True):
        done[path.name] = path.stat().st_mtime_ns
    assert sorted(done) == ["ring.pcap0", "ring.pcap1"]
    (spool / "gone.pcap").write_bytes(b"x")
    done["gone.pcap"] = (spool / "gone.pcap").stat().st_mtime_ns
    (spool / "gone.pcap").unlink()
    os.utime(ring[0], ns=(10**18 + 5, 10**18 + 5))  # the ring came round: rewritten
    assert completed_files(spool, done, settle=3600, drain=True, prune=True) == [ring[0]]
    assert "gone.pcap" not in done


def test_streaming_a_spool_does_not_import_pandas(tmp_path):
    """pyarrow imports pandas the first time it converts a Python or numpy object; the
    stream from spool files to feature parts (late packets cut, batches split across
    windows) hands it none. A model's scikit-learn imports it on its own."""
    capture = tmp_path / "lan.pcap"
    capture.write_bytes(gzip.decompress((SAMPLES / "lan.pcap.gz").read_bytes()))
    files = split_capture(capture, tmp_path / "spool", 500)
    newest = files[-1].stat().st_mtime + 1
    os.utime(files[0], (newest, newest))  # late: cut from the stream
    script = ("import atexit, sys; atexit.register(lambda: print('pandas' in sys.modules, "
              "file=sys.stderr)); from netsift.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run(
        [sys.executable, "-c", script, "stream", "--spool", str(tmp_path / "spool"),
         "--window", "2s", "--lateness", "1s", "--drain", "--out", str(tmp_path / "O")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["late_packets"] > 0
    assert parts(tmp_path / "O", "features").height > 0
    assert done.stderr.splitlines()[-1] == "False"
