"""A real Spark standalone cluster (master + worker on 127.0.0.1) for the Spark stream tests.

Started once per test session, on first use, like the feature engine's in
``tests/features/conftest.py``.
"""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java (no java on PATH)")
    from netsift.platform.spark import LocalCluster

    logs = tmp_path_factory.mktemp("spark-stream-cluster")
    with LocalCluster(cores=2, memory="2g", log_dir=logs) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def spark(spark_cluster):
    from netsift.platform.spark import get_session

    session = get_session(spark_cluster.master_url, app_name="netsift-stream-tests",
                          conf={"spark.executor.memory": "1g",
                                "spark.sql.shuffle.partitions": "2"})
    assert session.sparkContext.master == spark_cluster.master_url
    yield session
    session.stop()
