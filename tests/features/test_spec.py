"""The feature spec: validation, durations, the evaluation plan, the output schema."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

import netsift.features as nf
from netsift.errors import UsageError
from netsift.features import spec as fs


@pytest.mark.parametrize("text, ns", [
    ("60s", 60_000_000_000), ("5m", 300_000_000_000), ("1h", 3_600_000_000_000),
    ("500ms", 500_000_000), ("250us", 250_000), ("7ns", 7), ("1d", 86_400_000_000_000),
    (" 2 s ", 2_000_000_000), (42, 42),
])
def test_parse_duration(text, ns):
    assert nf.parse_duration(text) == ns


@pytest.mark.parametrize("text", ["60", "1.5s", "-1s", "0s", "s", "1y", "", 0, -5, True])
def test_bad_durations_are_usage_errors(text):
    with pytest.raises(UsageError):
        nf.parse_duration(text)


def test_nagm_feature_set_covers_the_issue():
    names = [f.name for f in nf.NAGM_FEATURES]
    for required in ("packets", "bytes", "length_mean", "length_std", "length_min",
                     "length_max", "dst_addresses", "dst_ports", "src_ports", "protocols",
                     "tcp_share", "udp_share", "icmp_share", "syn_share", "rst_share",
                     "fin_share", "packet_rate"):
        assert required in names
    for prefix, column in (("dport", "dport"), ("sport", "sport"), ("ttl", "ttl"),
                           ("length", "wire_len"), ("tcp_flags", "tcp_flags"),
                           ("tcp_window", "tcp_window"), ("proto", "proto")):
        mode = next(f for f in nf.NAGM_FEATURES if f.name == f"{prefix}_mode")
        share = next(f for f in nf.NAGM_FEATURES if f.name == f"{prefix}_mode_share")
        assert (mode.agg, mode.column, share.agg, share.column) == \
            ("mode", column, "mode_share", column)
    assert len(set(names)) == len(names)
    assert all(f.unit and f.description for f in nf.NAGM_FEATURES)


def test_schema_types_follow_aggregations():
    schema = nf.FeatureSpec().schema()
    assert schema.names[:2] == ["node", "window_start"]
    assert schema.field("node").type == pa.binary(16)
    assert schema.field("window_start").type == pa.int64()
    for f in nf.NAGM_FEATURES:
        want = pa.int64() if f.agg in ("count", "sum", "min", "max", "n_unique", "mode") \
            else pa.float64()
        assert schema.field(f.name).type == want, f.name


def test_plan_shares_one_value_table_per_mode_column():
    plan = fs.plan(nf.FeatureSpec())
    assert set(plan.tables) == {"dport", "sport", "ttl", "wire_len", "tcp_flags",
                                "tcp_window", "proto"}
    # Distinct counts of mode columns come from their tables, dst's from the main pass.
    assert {f.name for f in plan.tables["dport"]} == {"dport_mode", "dport_mode_share",
                                                      "dst_ports"}
    assert "dst_addresses" in {f.name for f in plan.main}
    assert not any(f.agg in ("mode", "mode_share") for f in plan.main)
    planned = [f for f in plan.main] + [f for fs_ in plan.tables.values() for f in fs_]
    assert sorted(f.name for f in planned) == sorted(f.name for f in nf.NAGM_FEATURES)


def test_input_columns_are_only_what_is_needed():
    spec = nf.FeatureSpec(features=(nf.Feature("n", "count", unit="packets"),))
    assert spec.input_columns() == ["ts", "src"]
    assert nf.FeatureSpec(features=spec.features, node="dst").input_columns() == ["ts", "dst"]
    validated = nf.FeatureSpec(features=spec.features, validated_only=True)
    assert validated.input_columns() == ["ts", "src", "dst", "sport", "dport", "tcp_flags"]


@pytest.mark.parametrize("feature, message", [
    (nf.Feature("x", "median", "ttl"), "unknown aggregation"),
    (nf.Feature("x", "sum"), "needs column"),
    (nf.Feature("x", "count", "ttl"), "takes no column"),
    (nf.Feature("x", "share"), "predicate"),
    (nf.Feature("x", "mean", "ttl", where=nf.IsIn("proto", (6,))), "predicate"),
    (nf.Feature("x", "max", "no_such_column"), "no packet column"),
    (nf.Feature("x", "mode", "src"), "unsigned integer"),
    (nf.Feature("x", "mode", "ts"), "unsigned integer"),
    (nf.Feature("x", "mean", "source"), "integer column"),
])
def test_bad_features_are_rejected(feature, message):
    with pytest.raises(UsageError, match=message):
        nf.FeatureSpec(features=(feature,))


@pytest.mark.parametrize("kwargs", [
    {"node": "both"}, {"window_ns": 0}, {"window_ns": 1.5},
    {"features": (nf.Feature("node", "count"),)},
    {"features": (nf.Feature("a", "count"), nf.Feature("a", "count"))},
])
def test_bad_specs_are_rejected(kwargs):
    with pytest.raises(UsageError):
        nf.FeatureSpec(**kwargs)


def test_spec_round_trips_to_json():
    spec = nf.FeatureSpec(window_ns=nf.parse_duration("5m"), node="dst", validated_only=True)
    data = json.loads(json.dumps(spec.to_json()))
    assert data["window_ns"] == 300_000_000_000 and data["node"] == "dst"
    assert data["validated_only"] is True
    assert [f["name"] for f in data["features"]] == [f.name for f in nf.NAGM_FEATURES]
