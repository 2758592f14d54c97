"""A plain-Python reading of docs/features.md, row by row: the oracle engines must match.

Deliberately naive (dicts, loops, ``statistics``) and written from the documented
definitions, not from either engine, so an engine bug and a spec misreading both show.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict

import pyarrow as pa

from netsift.features import spec as fs

SYN, ACK, RST = 0x002, 0x010, 0x004
FLOAT_RTOL = 1e-9


def _matches(where: fs.Predicate, row: dict) -> bool:
    value = row[where.column]
    if value is None:
        return False
    if isinstance(where, fs.IsIn):
        return value in where.values
    return value & where.set == where.set and value & where.clear == 0


def _validated_sources(rows: list[dict]) -> set[tuple[int, bytes]]:
    """(window_start, src) of initiators that completed a handshake in that window."""
    syn, synack, ack = {}, {}, {}
    for r in rows:
        flags = r["tcp_flags"]
        if flags is None:
            continue
        conn = (r["window_start"], r["src"], r["sport"], r["dst"], r["dport"])
        if flags & SYN and not flags & ACK:
            syn[conn] = min(syn.get(conn, r["ts"]), r["ts"])
        if flags & SYN and flags & ACK:
            back = (r["window_start"], r["dst"], r["dport"], r["src"], r["sport"])
            synack[back] = min(synack.get(back, r["ts"]), r["ts"])
        if flags & ACK and not flags & (SYN | RST):
            ack[conn] = max(ack.get(conn, r["ts"]), r["ts"])
    return {(c[0], c[1]) for c in syn
            if c in synack and c in ack and syn[c] <= synack[c] <= ack[c]}


def _feature(f: fs.Feature, group: list[dict], window_seconds: float):
    values = [r[f.column] for r in group if r[f.column] is not None] if f.column else []
    n = len(group)
    if f.agg == "count":
        return n
    if f.agg == "sum":
        return sum(values)
    if f.agg == "mean":
        return sum(values) / len(values) if values else None
    if f.agg == "std":
        return statistics.stdev(values) if len(values) >= 2 else None
    if f.agg == "min":
        return min(values) if values else None
    if f.agg == "max":
        return max(values) if values else None
    if f.agg == "n_unique":
        return len(set(values))
    if f.agg in ("mode", "mode_share"):
        if not values:
            return None
        counts = Counter(values)
        top = max(counts.values())
        mode = min(v for v, c in counts.items() if c == top)
        return mode if f.agg == "mode" else top / n
    if f.agg == "share":
        return sum(_matches(f.where, r) for r in group) / n
    if f.agg == "rate":
        return n / window_seconds
    raise AssertionError(f.agg)


def features(table: pa.Table, spec: fs.FeatureSpec) -> list[dict]:
    """Feature rows sorted by (window_start, node), as Python values."""
    rows = [r for r in table.to_pylist() if r["ts"] is not None and r[spec.node] is not None]
    for r in rows:
        r["window_start"] = r["ts"] // spec.window_ns * spec.window_ns
    if spec.validated_only:
        keep = _validated_sources(rows)
        rows = [r for r in rows if (r["window_start"], r["src"]) in keep]
    groups: dict[tuple[int, bytes], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["window_start"], r[spec.node])].append(r)
    out = []
    for (window_start, node), group in sorted(groups.items()):
        row = {fs.NODE: node, fs.WINDOW_START: window_start}
        for f in spec.features:
            row[f.name] = _feature(f, group, spec.window_seconds)
        out.append(row)
    return out


def assert_same(actual: pa.Table | list[dict], expected: list[dict], what: str = "") -> None:
    """Same rows in the same order: integers exactly, floats to FLOAT_RTOL."""
    if isinstance(actual, pa.Table):
        actual = actual.to_pylist()
    assert len(actual) == len(expected), f"{what}: {len(actual)} rows, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert list(a) == list(e), f"{what}: columns {list(a)} != {list(e)}"
        for name, want in e.items():
            got = a[name]
            where = f"{what} row {i} ({e[fs.NODE]!r}, {e[fs.WINDOW_START]}) {name}"
            if want is None or got is None:
                assert got is None and want is None, f"{where}: {got!r} != {want!r}"
            elif isinstance(want, float):
                assert isinstance(got, float), f"{where}: {got!r} is not a float"
                assert math.isclose(got, want, rel_tol=FLOAT_RTOL, abs_tol=0.0), \
                    f"{where}: {got!r} != {want!r}"
            else:
                assert got == want and type(got) is type(want), f"{where}: {got!r} != {want!r}"
