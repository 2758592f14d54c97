"""``netsift platform check`` on a real standalone cluster (master + one 2-core worker)."""

from __future__ import annotations

import re
import shutil
import time

import pytest

from netsift.cli import main

pytest.importorskip("torch")
pyspark = pytest.importorskip("pyspark")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java (no java on PATH)")
    from pyspark.sql import SparkSession

    from netsift.platform.spark import LocalCluster

    with LocalCluster(cores=2, memory="2g",
                      log_dir=tmp_path_factory.mktemp("spark-check")) as running:
        yield running
        session = SparkSession.getActiveSession()  # the one the check started
        if session is not None:
            session.stop()


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("netsift:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.spark
def test_check_trains_the_digits_network_on_two_processes(cluster, capsys):
    status = main(["platform", "check", "--master", cluster.master_url, "--processes", "2"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"spark {pyspark.__version__}, master {cluster.master_url}" in out
    assert "executors: 1\n  executor 0: 127.0.0.1, 2 cores, GPUs: none" in out
    assert re.search(r"executor 0 on \S+: Python 3\.\d+\.\d+, \d+ CPUs, torch ", out)
    # auto on CPU-only executors: the CPU, said once, with the reason.
    assert len(re.findall(r"^device: cpu \(auto: executor\(s\) 0 have no GPUs", out,
                          re.MULTILINE)) == 1
    processes = re.findall(r"^  process (\d) on \S+: device (\w+), (\d+) images$", out,
                           re.MULTILINE)
    assert sorted(rank for rank, _, _ in processes) == ["0", "1"]
    assert {device for _, device, _ in processes} == {"cpu"}
    assert sum(int(images) for _, _, images in processes) == 1347  # 75 % of 1797
    accuracy = float(re.search(r"^accuracy: ([\d.]+) on 450 held-out images", out,
                               re.MULTILINE).group(1))
    assert accuracy >= 0.9
    assert out.rstrip().endswith("ok")


@pytest.mark.spark
def test_gpu_device_on_cpu_executors_is_one_line_and_exit_1(cluster, capsys):
    status = main(["platform", "check", "--master", cluster.master_url, "--device", "gpu"])
    captured = capsys.readouterr()
    assert status == 1
    line = _one_error_line(captured.err)
    assert line.startswith("netsift: error: device gpu: executor(s) 0 have no GPUs")
    assert "training" not in captured.out  # failed before any job ran


@pytest.mark.spark
def test_more_processes_than_task_slots_fail_before_training(cluster, capsys):
    status = main(["platform", "check", "--master", cluster.master_url, "--processes", "3"])
    captured = capsys.readouterr()
    assert status == 1
    assert "3 training processes need as many task slots" in _one_error_line(captured.err)


def test_unreachable_master_fails_in_bounded_time(capsys):
    started = time.monotonic()
    status = main(["platform", "check", "--master", "spark://127.0.0.1:1", "--timeout", "5"])
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    assert status == 1
    assert elapsed < 10
    assert _one_error_line(captured.err).startswith(
        "netsift: error: cannot reach the Spark master spark://127.0.0.1:1 (127.0.0.1:1: ")
    assert captured.out == ""
