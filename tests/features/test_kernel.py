"""The compiled kernel's own paths, each checked against the lazy Polars query (an
independent implementation) and the plain-Python reference."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from feature_reference import assert_same, features
from frames import assert_same_frames

import netsift.features as nf
from netsift.features import kernel
from netsift.features import polars_engine as pe
from netsift.schema import PACKET_SCHEMA, address_from_text

T0 = 1_767_225_600 * 1_000_000_000
MINUTE = 60 * 10**9


def _addresses(texts) -> list[bytes]:
    return [address_from_text(t) for t in texts]


def _window(rng, start: int, rows: int, nodes: list[bytes], dsts: list[bytes]) -> dict:
    return {
        "ts": np.sort(rng.integers(start, start + MINUTE, rows)),
        "src": [nodes[i] for i in rng.zipf(1.3, rows) % len(nodes)],
        "dst": [dsts[i] for i in rng.integers(0, len(dsts), rows)],
    }


def kernel_paths_table(seed: int = 11) -> pa.Table:
    """Four windows, one per way the kernel groups nodes, with values that take every
    aggregation path: counted and sorted modes, hashed and sorted distinct addresses."""
    rng = np.random.default_rng(seed)
    spread = _addresses(f"{rng.integers(1, 224)}.{rng.integers(0, 256)}.{rng.integers(0, 256)}"
                        f".{rng.integers(1, 255)}" for _ in range(300))
    one_16 = _addresses(f"10.9.{i // 250}.{i % 250 + 1}" for i in range(200))
    mixed = spread[:50] + _addresses(f"fd00::{i:x}" for i in range(1, 40)) \
        + _addresses(f"2001:db8:{i:x}::1" for i in range(1, 10))
    dsts = spread[:40] + _addresses(f"fd00:1::{i:x}" for i in range(1, 30))
    parts = [
        _window(rng, T0, 5000, spread, dsts),           # radix sort, both 16-bit passes
        _window(rng, T0 + MINUTE, 4000, one_16, dsts),  # radix sort, one pass (one /16)
        _window(rng, T0 + 2 * MINUTE, 3000, mixed, dsts),  # IPv6 too: hash table ranks
        _window(rng, T0 + 3 * MINUTE, 300, spread, dsts),  # small: a comparison sort
    ]
    rows = sum(len(p["ts"]) for p in parts)
    table = pa.table({
        "ts": pa.array(np.concatenate([p["ts"] for p in parts])),
        "src": pa.array([a for p in parts for a in p["src"]], pa.binary(16)),
        "dst": pa.array([a for p in parts for a in p["dst"]], pa.binary(16),
                        mask=rng.random(rows) < 0.03),
        "proto": pa.array(rng.choice([6, 17, 1, 58], rows).astype(np.uint8)),
        "sport": pa.array(rng.integers(1024, 65536, rows).astype(np.uint16)),
        "dport": pa.array(rng.choice([22, 80, 443, 53, 8080], rows).astype(np.uint16),
                          mask=rng.random(rows) < 0.1),
        "ttl": pa.array(rng.choice([63, 64, 128, 255], rows).astype(np.uint8)),
        # Jumbo lengths above the counted domain: those groups' modes are sorted.
        "wire_len": pa.array(rng.choice([60, 1514, 700, 300_000, 9_000_000], rows)
                             .astype(np.uint32)),
        "tcp_flags": pa.array(rng.choice([0x02, 0x12, 0x10, 0x11, 0x04], rows)
                              .astype(np.uint16), mask=rng.random(rows) < 0.2),
        "tcp_window": pa.array(rng.integers(0, 65536, rows).astype(np.uint16)),
    })
    for field in PACKET_SCHEMA:
        if field.name not in table.schema.names:
            table = table.append_column(field.name, pa.nulls(rows, field.type))
    return table.select(PACKET_SCHEMA.names).cast(PACKET_SCHEMA)


@pytest.fixture(scope="module")
def paths_table() -> pa.Table:
    return kernel_paths_table()


def test_grouping_paths_give_the_reference_features(paths_table):
    spec = nf.FeatureSpec()
    windows = np.diff(np.flatnonzero(np.diff(
        paths_table.column("ts").to_numpy() // spec.window_ns, prepend=-1, append=-1)))
    assert windows.max() >= kernel._RADIX_FROM > windows.min()
    got = kernel.evaluate(paths_table, spec)
    assert_same(got, features(paths_table, spec), "kernel paths")
    # Some group's distinct addresses went through the hash set.
    assert pc.max(got.column("dst_addresses")).as_py() > kernel._HASH_ABOVE


def test_ipv4_addresses_are_counted_as_32_bit_keys(paths_table):
    """A column of IPv4 addresses only (nulls aside) takes the 32-bit distinct path; the
    fixture's own dst column, with IPv6 addresses, takes the 128-bit one."""
    rng = np.random.default_rng(5)
    v4 = _addresses(f"192.0.{i // 200}.{i % 200 + 1}" for i in range(400))
    rows = paths_table.num_rows
    dst = pa.array([v4[i] for i in rng.integers(0, len(v4), rows)], pa.binary(16),
                   mask=rng.random(rows) < 0.03)
    table = paths_table.set_column(paths_table.schema.get_field_index("dst"), "dst", dst)

    def not_v4(column) -> int:
        return kernel._v4_keys(kernel._address_words(column, "test_words"),
                               kernel._validity(column, "test_valid"), True,
                               np.empty(len(column), np.uint32))

    assert not_v4(table.column("dst")) == 0 and not_v4(paths_table.column("dst")) > 0
    spec = nf.FeatureSpec()
    got = kernel.evaluate(table, spec)
    assert_same(got, features(table, spec), "IPv4 distinct addresses")
    assert pc.max(got.column("dst_addresses")).as_py() > kernel._HASH_ABOVE


@pytest.mark.parametrize("node", ["src", "dst"])
@pytest.mark.parametrize("window", ["60s", "1s", "5m"])
def test_grouping_paths_equal_the_query(paths_table, node, window):
    spec = nf.FeatureSpec(window_ns=nf.parse_duration(window), node=node)
    got = kernel.evaluate(pe._kernel_input(paths_table, spec), spec)
    want = pe.collect(paths_table, spec, engine="in-memory")
    assert_same_frames(pl.from_arrow(got), pl.from_arrow(want))


def test_working_memory_from_a_larger_call_is_never_read(paths_table):
    """Working arrays are kept between calls: what a larger table left in them must not
    reach a smaller one's results."""
    spec = nf.FeatureSpec()
    small = paths_table.slice(4000, 2500)
    fresh = kernel.evaluate(small, spec)
    kernel.evaluate(paths_table, spec)
    again = kernel.evaluate(small, spec)
    assert again.equals(fresh)


def test_threads_featurise_at_once(paths_table):
    """Each calling thread has its own working arrays."""
    spec = nf.FeatureSpec()
    parts = [paths_table.slice(0, 5000), paths_table.slice(5000, 4000),
             paths_table.slice(9000)]
    alone = [kernel.evaluate(p, spec) for p in parts]
    with ThreadPoolExecutor(max_workers=3) as pool:
        for _ in range(3):
            together = list(pool.map(lambda p: kernel.evaluate(p, spec), parts))
            assert all(a.equals(b) for a, b in zip(alone, together, strict=True))


def test_one_compiled_variant_whether_columns_are_views_or_copies(paths_table, tmp_path):
    """One-chunk columns reach the kernels as views (of read-only memory when Polars
    decoded them, of writable memory when pyarrow made them), chunked ones as copies:
    all as read-only arrays, so numba compiles (and a process loads from its cache) one
    variant of each kernel, not one per writability."""
    import pyarrow.parquet as pq
    from numba.core import types
    from numba.core.registry import CPUDispatcher

    spec = nf.FeatureSpec()
    pq.write_table(paths_table, tmp_path / "packets.parquet")
    decoded = pe._read_rows(str(tmp_path / "packets.parquet"), 0, paths_table.num_rows,
                            paths_table.schema)
    assert not np.frombuffer(decoded.column("ts").chunk(0).buffers()[1], np.int64) \
        .flags.writeable
    chunked = pa.concat_tables([paths_table.slice(0, 6000), paths_table.slice(6000)])
    assert chunked.column("ts").num_chunks == 2
    want = kernel.evaluate(paths_table, spec)
    assert kernel.evaluate(decoded, spec).equals(want)
    assert kernel.evaluate(chunked, spec).equals(want)

    def writable(signature):
        return tuple(t.copy(readonly=False) if isinstance(t, types.Array) else t
                     for t in signature)

    for name in ("_window_ids", "_group", "_narrow_aggregates", "_v4_keys", "_keys"):
        dispatcher = getattr(kernel, name)
        assert isinstance(dispatcher, CPUDispatcher) and dispatcher.signatures
        assert len({writable(s) for s in dispatcher.signatures}) == \
            len(dispatcher.signatures), name
