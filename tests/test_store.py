"""The Parquet packet dataset: layout, atomicity, manifest, re-runs, full disk, killed runs."""

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
import pyarrow.parquet as pq
import pytest

import netsift
from netsift import store
from netsift.errors import StorageError
from netsift.ingest.job import ingest

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "lan.pcap.gz"


def _rows(root) -> int:
    return store.read_dataset(root).num_rows


@pytest.fixture(scope="module")
def two_hour_capture(tmp_path_factory) -> Path:
    """The sample plus a copy shifted by one hour (editcap -t), merged by mergecap."""
    tmp = tmp_path_factory.mktemp("twohours")
    plain = tmp / "lan.pcap"
    plain.write_bytes(__import__("gzip").decompress(SAMPLE.read_bytes()))
    shifted = tmp / "later.pcap"
    subprocess.run(["editcap", "-t", "3600", str(plain), str(shifted)], check=True)
    merged = tmp / "merged.pcap"
    subprocess.run(["mergecap", "-F", "pcap", "-w", str(merged), str(plain), str(shifted)],
                   check=True)
    return merged


def test_ingest_writes_hour_partitions_with_every_packet(tmp_path, two_hour_capture):
    out = tmp_path / "ds"
    report = ingest([str(two_hour_capture)], out)
    expected = netsift.read_table(two_hour_capture)
    assert report.packets == expected.num_rows
    files = store.dataset_files(out)
    hours = {Path(f).parent.name for f in files}
    assert len(files) == 2 and len(hours) == 2
    got = store.read_dataset(out).sort_by([("ts", "ascending"), ("record", "ascending")])
    want = expected.cast(got.schema).sort_by([("ts", "ascending"), ("record", "ascending")])
    assert got.equals(want)
    # Every row sits in the partition of its own hour.
    for f in files:
        ts = pq.read_table(f, columns=["ts"]).column("ts").to_numpy()
        hour = int(ts[0] // store.HOUR_NS)
        assert (ts // store.HOUR_NS == hour).all()
        assert store.partition_path(hour) in f
    assert not (out / store.TMP_DIR).exists()


def test_dataset_reads_with_hive_partitions_in_polars(tmp_path):
    out = tmp_path / "ds"
    ingest([str(SAMPLE)], out)
    frame = pl.scan_parquet(str(out / "**" / "*.parquet"), hive_partitioning=True).collect()
    assert {"date", "hour", "src", "ts"} <= set(frame.columns)
    assert frame.height == netsift.read_table(SAMPLE).num_rows
    assert frame["src"].dtype == pl.Binary


def test_rerun_skips_unchanged_input_and_force_does_not_duplicate(tmp_path):
    out = tmp_path / "ds"
    first = ingest([str(SAMPLE)], out)
    assert first.count("ingested") == 1
    manifest = json.loads((out / store.MANIFEST).read_text())
    entry = manifest["inputs"][os.path.realpath(SAMPLE)]
    assert entry["packets"] == first.packets and entry["files"]
    second = ingest([str(SAMPLE)], out)
    assert second.count("current") == 1 and second.packets == 0
    third = ingest([str(SAMPLE)], out, force=True)
    assert third.count("ingested") == 1
    assert _rows(out) == first.packets


def test_changed_input_replaces_its_old_files(tmp_path, two_hour_capture):
    capture = tmp_path / "cap.pcap"
    shutil.copy(two_hour_capture, capture)
    out = tmp_path / "ds"
    ingest([str(capture)], out)
    assert len(store.dataset_files(out)) == 2
    # The capture is rewritten with one hour only: the other hour's file must go.
    subprocess.run(["editcap", "-r", str(two_hour_capture), str(capture), "1-100"], check=True)
    report = ingest([str(capture)], out)
    assert report.count("ingested") == 1
    assert _rows(out) == 100 and len(store.dataset_files(out)) == 1


def test_second_writer_is_refused(tmp_path):
    out = tmp_path / "ds"
    with store.DatasetLock(out):
        with pytest.raises(StorageError, match="another netsift process"):
            ingest([str(SAMPLE)], out)


def test_leftover_temp_files_are_cleared_and_never_read(tmp_path):
    out = tmp_path / "ds"
    (out / store.TMP_DIR).mkdir(parents=True)
    (out / store.TMP_DIR / "half.parquet").write_bytes(b"PAR1 half a file")
    ingest([str(SAMPLE)], out)
    assert not (out / store.TMP_DIR).exists()
    assert all(".tmp" not in f for f in store.dataset_files(out))


@pytest.mark.root
def test_full_disk_is_one_clear_error_and_leaves_no_partial_file(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mnt)], check=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "netsift.cli", "ingest", str(SAMPLE), "--out",
             str(mnt / "ds")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [
            f"netsift: error: {mnt / 'ds'}: no space left on device"]
        assert store.dataset_files(mnt / "ds") == []
        assert not (mnt / "ds" / store.MANIFEST).exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_killed_ingest_then_rerun_gives_every_packet_once(tmp_path):
    """SIGKILL mid-run, then run again: no lost and no duplicated rows."""
    raw = __import__("gzip").decompress(SAMPLE.read_bytes())
    header, body = raw[:24], raw[24:]
    big = tmp_path / "big.pcap"
    with open(big, "wb") as f:
        f.write(header)
        for _ in range(600):  # ~1.4 M packets, same hour
            f.write(body)
    small = [tmp_path / f"small{i}.pcap" for i in range(3)]
    for path in small:
        path.write_bytes(raw)
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "netsift.cli", "ingest", str(big), *map(str, small),
           "--out", str(out), "--jobs", "1", "--batch-rows", "65536"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any((out / store.TMP_DIR).glob("*.parquet")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    packets_each = netsift.read_table(small[0]).num_rows
    assert _rows(out) == packets_each * 603
    # Every (source, record) appears once.
    table = store.read_dataset(out)
    keys = pl.from_arrow(table.select(["source", "record"]))
    assert keys.unique().height == keys.height


def test_ingesting_a_capture_does_not_import_pandas(tmp_path, two_hour_capture):
    """pyarrow imports pandas the first time it converts a Python or numpy object (0.15-0.3
    s of each ingest process); from capture to hour partitions nothing hands it one. The
    capture spans two hours, so batches are split by hour."""
    script = f"""
import sys
from netsift.ingest.job import ingest
report = ingest([{str(two_hour_capture)!r}], {str(tmp_path / "ds")!r}, jobs=1)
print(report.packets, "pandas" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    packets, imported = done.stdout.split()
    assert int(packets) == netsift.read_table(two_hour_capture).num_rows
    assert len({Path(f).parent.name for f in store.dataset_files(tmp_path / "ds")}) == 2
    assert imported == "False"
