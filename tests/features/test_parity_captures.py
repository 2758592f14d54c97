"""The embedded kernel, the Polars query and Spark side by side on real captures made by
real tools (tests/netlab.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from feature_reference import assert_same

import netsift
import netsift.features as nf
from netsift.features import polars_engine

# tcpdump -i any (IPv4, IPv6, loopback, TCP handshakes), dumpcap on four interfaces.
CAPTURES = ("sll2.pcap", "multi.pcapng", "ethernet.pcap")


@pytest.fixture(scope="module")
def capture_table(captures) -> pa.Table:
    table = pa.concat_tables(netsift.read_table(captures[name].path) for name in CAPTURES)
    # The scenario's three captures hold about 1,000-1,100 packets between them, varying
    # run to run (retransmissions, timing): the bound only rules out a failed capture.
    assert table.num_rows > 600
    return table


@pytest.mark.spark
@pytest.mark.parametrize("spec", [
    nf.FeatureSpec(window_ns=nf.parse_duration("1s")),
    nf.FeatureSpec(validated_only=True, node="dst"),
], ids=["src-1s", "dst-validated"])
def test_engines_agree_on_real_captures(capture_table, spark, spec):
    on_kernel = nf.compute_features(capture_table, spec)
    on_query = polars_engine.collect(capture_table, spec, engine="streaming")
    on_spark = nf.compute_features(capture_table, spec, engine="spark", spark=spark)
    assert on_kernel.num_rows > 0
    assert on_spark.schema == on_query.schema == on_kernel.schema
    assert_same(on_query, on_kernel.to_pylist(), f"query {spec}")
    assert_same(on_spark, on_kernel.to_pylist(), f"spark {spec}")
