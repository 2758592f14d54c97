"""One suite, every engine: each test runs on Polars and on Spark (a real standalone cluster).

Expectations come from three places: facts of the scenario recorded in
samples/lan.pcap.gz (an nmap SYN scan of 1000 ports, web clients), the plain-Python
reading of the spec in ``feature_reference``, and hand-made tables for the null rules.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
from feature_reference import assert_same, features
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import netsift.features as nf
from netsift.schema import PACKET_SCHEMA, address_from_text

SCANNER, SERVER = address_from_text("10.77.0.66"), address_from_text("10.77.0.1")
CLIENTS = {address_from_text("10.77.0.11"), address_from_text("10.77.0.12")}
SECOND = 1_000_000_000
SYN, SYN_ACK, ACK, RST_ACK, PSH_ACK, FIN_ACK = 0x02, 0x12, 0x10, 0x14, 0x18, 0x11


def packets(*rows: dict) -> pa.Table:
    """A packet table from partial rows (missing columns null)."""
    return pa.Table.from_pylist([dict(r) for r in rows], schema=PACKET_SCHEMA)


def by_node(table: pa.Table) -> dict[bytes, dict]:
    return {row["node"]: row for row in table.to_pylist()}


@pytest.fixture(scope="module")
def lan_results():
    """Feature tables of the sample, computed once per (engine, spec) for this module."""
    return {}


def lan_features(engine, lan_dataset, lan_results, spec: nf.FeatureSpec) -> pa.Table:
    key = (engine.name, spec)
    if key not in lan_results:
        lan_results[key] = engine(lan_dataset, spec)
    return lan_results[key]


LAN_SPECS = [
    nf.FeatureSpec(),
    nf.FeatureSpec(node="dst", window_ns=10 * SECOND),
    nf.FeatureSpec(validated_only=True),
]


@pytest.mark.parametrize("spec", LAN_SPECS, ids=["src-60s", "dst-10s", "validated"])
def test_sample_capture_matches_the_spec(engine, lan_dataset, lan_table, lan_results, spec):
    got = lan_features(engine, lan_dataset, lan_results, spec)
    assert got.schema == spec.schema()
    assert_same(got, features(lan_table, spec), f"{engine} {spec.node}")


def test_syn_scan_by_hand(engine, lan_dataset, lan_results):
    rows = by_node(lan_features(engine, lan_dataset, lan_results, nf.FeatureSpec()))
    scan = rows[SCANNER]
    # nmap -sS -p 1-1000: one SYN to each port from one source port, nothing else.
    assert scan["packets"] == 1000 and scan["dst_ports"] == 1000
    assert scan["dst_addresses"] == 1 and scan["src_ports"] == 1 and scan["protocols"] == 1
    assert scan["syn_share"] == 1.0 and scan["tcp_share"] == 1.0 and scan["rst_share"] == 0.0
    assert scan["tcp_flags_mode"] == SYN and scan["tcp_flags_mode_share"] == 1.0
    # Every port was probed once: a 1000-way tie, broken by the smallest port.
    assert scan["dport_mode"] == 1 and scan["dport_mode_share"] == 1 / 1000
    assert scan["length_min"] == scan["length_max"] == scan["length_mode"]
    assert scan["length_std"] == 0.0
    assert scan["bytes"] == 1000 * scan["length_min"]
    assert scan["packet_rate"] == 1000 / 60
    # The server refused all 1000 probes (none of ports 1-1000 is open) with RST-ACK.
    server = rows[SERVER]
    assert server["rst_share"] == 1000 / server["packets"]
    assert server["tcp_flags_mode"] == RST_ACK


def test_validated_keeps_only_sources_with_a_handshake(engine, lan_dataset, lan_results):
    everyone = by_node(lan_features(engine, lan_dataset, lan_results, nf.FeatureSpec()))
    kept = by_node(lan_features(engine, lan_dataset, lan_results,
                                nf.FeatureSpec(validated_only=True)))
    # The web clients completed handshakes; the scanner's were half-open, and the server
    # only answered (it never initiated), so both drop out.
    assert set(kept) == CLIENTS
    for node in CLIENTS:
        assert kept[node] == everyone[node]


def test_null_rules(engine):
    v4, v6 = address_from_text("192.0.2.1"), address_from_text("2001:db8::1")
    other = address_from_text("192.0.2.9")
    t0 = 1_800_000_000 * SECOND
    table = packets(
        # One ICMP packet: no ports, no flags; std of one value is null.
        {"ts": t0, "src": v4, "dst": other, "proto": 1, "ttl": 64, "wire_len": 98},
        # Two UDP packets with no length at all: sum 0, mean/min/max/std/mode null.
        {"ts": t0 + 1, "src": v6, "dst": other, "proto": 17, "sport": 5, "dport": 53},
        {"ts": t0 + 2, "src": v6, "dst": None, "proto": 17, "sport": 5, "dport": None},
        # Left out: no node, no timestamp.
        {"ts": t0, "src": None, "dst": other, "proto": 6, "wire_len": 60},
        {"ts": None, "src": v4, "dst": other, "proto": 6, "wire_len": 60},
    )
    rows = by_node(engine(table))
    assert set(rows) == {v4, v6}
    icmp, udp = rows[v4], rows[v6]
    assert icmp["packets"] == 1 and icmp["bytes"] == 98 and icmp["length_mean"] == 98.0
    assert icmp["length_std"] is None
    assert icmp["length_min"] == icmp["length_max"] == icmp["length_mode"] == 98
    assert icmp["dst_ports"] == icmp["src_ports"] == 0
    assert icmp["dport_mode"] is None and icmp["dport_mode_share"] is None
    assert icmp["tcp_flags_mode"] is None and icmp["tcp_window_mode_share"] is None
    assert icmp["icmp_share"] == 1.0 and icmp["syn_share"] == 0.0
    assert udp["packets"] == 2 and udp["bytes"] == 0
    for name in ("length_mean", "length_std", "length_min", "length_max", "length_mode",
                 "length_mode_share", "ttl_mode"):
        assert udp[name] is None, name
    assert udp["dst_addresses"] == 1 and udp["dst_ports"] == 1
    assert udp["dport_mode"] == 53 and udp["dport_mode_share"] == 0.5  # nulls still count
    assert udp["udp_share"] == 1.0 and udp["protocols"] == 1


def test_ties_windows_and_std(engine):
    node = address_from_text("198.51.100.7")
    width = 7 * SECOND
    spec = nf.FeatureSpec(window_ns=width)

    def p(ts, dport, length):
        return {"ts": ts, "src": node, "dst": node, "proto": 6, "dport": dport,
                "wire_len": length, "tcp_flags": ACK}

    table = packets(
        # Window [-7 s, 0): times before the epoch floor to the earlier boundary.
        p(-1, 80, 100), p(-width, 22, 100),
        # Window [0, 7 s): 443 and 22 tie at two packets each -> 22.
        p(0, 443, 60), p(1, 22, 60), p(width - 1, 443, 1514), p(5, 22, 1514), p(6, 8080, 60),
        # Window [7 s, 14 s): starts exactly on the boundary.
        p(width, 9, 1000),
    )
    rows = engine(table, spec).to_pylist()
    assert [r["window_start"] for r in rows] == [-width, 0, width]
    early, middle, late = rows
    assert early["dport_mode"] == 22 and early["dport_mode_share"] == 0.5
    assert middle["packets"] == 5 and middle["dport_mode"] == 22
    assert middle["dport_mode_share"] == 2 / 5 and middle["length_mode"] == 60
    # Lengths 60, 60, 1514, 1514, 60: mean 641.6; squared deviations 3 * 581.6**2 +
    # 2 * 872.4**2 = 2536939.2; sample variance / 4 = 634234.8.
    assert middle["length_mean"] == 641.6
    assert math.isclose(middle["length_std"], math.sqrt(634234.8), rel_tol=1e-12)
    assert early["length_std"] == 0.0
    assert late["packets"] == 1 and late["packet_rate"] == 1 / 7


def test_empty_input(engine):
    for table in (packets(), packets({"ts": 5, "src": None, "wire_len": 60})):
        got = engine(table)
        assert got.num_rows == 0 and got.schema == nf.FeatureSpec().schema()


def test_handshake_order_matters(engine):
    a, b = address_from_text("203.0.113.1"), address_from_text("203.0.113.2")
    t0 = 1_800_000_000 * SECOND

    def p(ts, src, dst, sport, dport, flags):
        return {"ts": ts, "src": src, "dst": dst, "proto": 6, "sport": sport,
                "dport": dport, "tcp_flags": flags, "wire_len": 60}

    table = packets(
        # a completes a handshake with b (SYN, SYN-ACK, ACK) ...
        p(t0, a, b, 40000, 80, SYN), p(t0 + 1, b, a, 80, 40000, SYN_ACK),
        p(t0 + 2, a, b, 40000, 80, ACK),
        # ... b's "handshake" towards a acks before the SYN-ACK: not complete.
        p(t0 + 3, b, a, 40001, 443, SYN), p(t0 + 4, b, a, 40001, 443, ACK),
        p(t0 + 5, a, b, 443, 40001, SYN_ACK),
    )
    kept = engine(table, nf.FeatureSpec(validated_only=True))
    assert kept.column("node").to_pylist() == [a]
    assert kept.column("packets").to_pylist() == [3]  # all of a's packets in the window
    receivers = engine(table, nf.FeatureSpec(validated_only=True, node="dst"))
    # The receivers' view of validated sources only: b receives a's three packets.
    assert by_node(receivers)[b]["packets"] == 3 and set(by_node(receivers)) == {b}


# Property-based: random small tables from small value pools (so modes tie, handshakes
# complete by chance, and nulls appear in every column), compared with the reference.
ADDRESSES = [address_from_text(a) for a in ("10.0.0.1", "10.0.0.2", "fd00::1")] + [None]
FLAGS = [SYN, SYN_ACK, ACK, RST_ACK, PSH_ACK, FIN_ACK, 0x04, 0x01, None]
WINDOWS = [1 * SECOND, 7 * SECOND, 60 * SECOND]
# Each table of a batch is shifted by a multiple of every window, into its own time.
BATCH_SHIFT = 420 * SECOND * 10_000


def _row(ts):
    return st.fixed_dictionaries({
        "ts": ts,
        "src": st.sampled_from(ADDRESSES), "dst": st.sampled_from(ADDRESSES),
        "proto": st.sampled_from([1, 6, 17, 58, 47, None]),
        "sport": st.sampled_from([80, 443, 40000, None]),
        "dport": st.sampled_from([80, 443, 40000, None]),
        "ttl": st.sampled_from([1, 64, 255, None]),
        "wire_len": st.one_of(st.sampled_from([60, 1514]), st.integers(0, 2**32 - 1),
                              st.none()),
        "tcp_flags": st.sampled_from(FLAGS),
        "tcp_window": st.sampled_from([0, 1024, 65535, None]),
    })


@st.composite
def packet_tables(draw, max_rows: int = 30) -> pa.Table:
    base = draw(st.sampled_from([0, -100 * SECOND, 1_700_000_000 * SECOND]))
    times = st.integers(base, base + 130 * SECOND)
    ts = st.one_of(st.none(), times, times, times)  # a quarter without a timestamp
    return packets(*draw(st.lists(_row(ts), max_size=max_rows)))


specs = st.builds(nf.FeatureSpec, window_ns=st.sampled_from(WINDOWS),
                  node=st.sampled_from(["src", "dst"]), validated_only=st.booleans())


def _shifted(tables: list[pa.Table]) -> pa.Table:
    parts = []
    for i, table in enumerate(tables):
        ts = pa.compute.add(table.column("ts"), pa.scalar(i * BATCH_SHIFT, pa.int64()))
        parts.append(table.set_column(0, "ts", ts))
    return pa.concat_tables(parts)


def test_random_tables_match_the_spec(engine):
    # Spark runs a batch of tables as one job (each in its own time range), so a few
    # examples cover hundreds of tables without a job per table.
    examples, batch = (4, 40) if engine.name == "spark" else (40, 5)

    # No shrinking on Spark: each shrink step would be another cluster job.
    phases = (Phase.explicit, Phase.generate) if engine.name == "spark" else tuple(Phase)

    @settings(max_examples=examples, deadline=None, database=None, phases=phases,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(packet_tables(), min_size=batch, max_size=batch), specs)
    def check(tables, spec):
        table = _shifted(tables)
        assert_same(engine(table, spec), features(table, spec), f"{engine} {spec}")

    check()
