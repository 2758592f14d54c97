"""Spark session and cluster helpers that need no cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from netsift.platform import spark as sp


@pytest.mark.parametrize("script", [
    "sleep 60 & sleep 60 & wait",                  # children go with the leader
    "trap '' TERM; sleep 60 & sleep 60 & wait",    # deaf to SIGTERM: SIGKILL follows
])
def test_stop_group_ends_the_leader_and_its_children(script):
    proc = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    time.sleep(0.3)
    assert sp.group_alive(proc.pid)
    started = time.monotonic()
    sp._stop_group(proc, grace=1.0)
    assert proc.returncode is not None
    assert not sp.group_alive(proc.pid)
    assert time.monotonic() - started < 5


def test_stop_group_of_a_finished_process():
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    sp._stop_group(proc)
    assert proc.returncode == 0


def test_spark_home_has_the_launch_script():
    pytest.importorskip("pyspark")
    assert (sp.spark_home() / "bin" / "spark-class").is_file()


def test_cluster_start_failure_names_the_log(tmp_path, monkeypatch):
    pytest.importorskip("pyspark")
    # A master class that does not exist: the JVM exits at once; start() reports its log.
    cluster = sp.LocalCluster(timeout=60, log_dir=tmp_path)
    monkeypatch.setattr(cluster, "_launch", _broken_launch(cluster))
    with pytest.raises(sp.ClusterError, match="master did not start") as info:
        cluster.start()
    assert str(tmp_path / "master.log") in str(info.value)
    assert cluster._procs == []


def _broken_launch(cluster):
    original = cluster._launch

    def launch(name, cls, *args):
        return original(name, "org.apache.spark.deploy.NoSuchMaster", *args)
    return launch


@pytest.mark.spark
def test_a_session_starts_without_pyspark_pandas_warning():
    """pyspark warns that pandas 3 is newer than it knows when a session starts; netsift
    hands it no pandas data, so a user's command must not print that."""
    pytest.importorskip("pyspark")
    code = ("from netsift.platform.spark import get_session\n"
            "get_session('local[1]', app_name='netsift-warning-test').stop()\n")
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FutureWarning" not in proc.stderr
