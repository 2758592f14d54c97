"""Engines as fixtures: every test taking ``engine`` runs once per feature engine.

The Spark engine runs on a real standalone cluster (master + worker started from the
pyspark package's own launch scripts on 127.0.0.1), started once per test session.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest

import netsift.features as nf

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "lan.pcap.gz"


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java (no java on PATH)")
    from netsift.platform.spark import LocalCluster

    logs = tmp_path_factory.mktemp("spark-cluster")
    with LocalCluster(cores=2, memory="2g", log_dir=logs) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def spark(spark_cluster):
    from netsift.platform.spark import get_session

    session = get_session(spark_cluster.master_url, app_name="netsift-tests",
                          conf={"spark.executor.memory": "1g",
                                # Test tables are small: fewer tasks per shuffle.
                                "spark.sql.shuffle.partitions": "2"})
    assert session.sparkContext.master == spark_cluster.master_url
    yield session
    session.stop()


class Engine:
    """One engine behind one call: ``engine(source, spec) -> feature table``.

    ``polars`` is the embedded engine as shipped (the compiled kernel on the CPU);
    ``polars-query`` is its lazy Polars query, the plan the GPU runs.
    """

    def __init__(self, name: str, spark=None):
        self.name, self.spark = name, spark

    def __call__(self, source, spec: nf.FeatureSpec = nf.FeatureSpec()) -> pa.Table:
        if self.name == "polars-query":
            from netsift.features import polars_engine

            return polars_engine.collect(source, spec, engine="streaming")
        return nf.compute_features(source, spec, engine=self.name, spark=self.spark)

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(params=["polars", "polars-query",
                        pytest.param("spark", marks=pytest.mark.spark)])
def engine(request) -> Engine:
    if request.param == "spark":
        return Engine("spark", request.getfixturevalue("spark"))
    return Engine(request.param)


@pytest.fixture(scope="session")
def lan_table() -> pa.Table:
    """samples/lan.pcap.gz: a LAN captured by tcpdump, with an nmap SYN scan and ping sweep."""
    import netsift

    return netsift.read_table(SAMPLE)


@pytest.fixture(scope="session")
def lan_dataset(tmp_path_factory) -> Path:
    """The same capture ingested into a packet dataset (date=/hour= Parquet)."""
    from netsift.ingest.job import ingest

    out = tmp_path_factory.mktemp("lan") / "packets"
    report = ingest([str(SAMPLE)], out, jobs=1)
    assert report.packets > 2000 and not report.failed
    return out
