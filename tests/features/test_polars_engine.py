"""Polars engine specifics: time-range chunks over hour partitions, both key layouts."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute  # noqa: F401  pa.compute
import pyarrow.parquet as pq
import pytest
from feature_reference import assert_same, features

import netsift.features as nf
from netsift import store
from netsift.errors import StorageError, UsageError
from netsift.features import polars_engine as pe
from netsift.schema import PACKET_SCHEMA, address_from_text

HOUR = 3_600_000_000_000
T0 = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z, an hour boundary


def synthetic(rows: int, hours: float, seed: int = 3) -> pa.Table:
    """Packets spread over ``hours`` from T0 - 10 min, IPv4 and IPv6 nodes, some nulls."""
    rng = np.random.default_rng(seed)
    nodes = [address_from_text(a) for a in ("10.1.0.1", "10.1.0.2", "10.1.0.3", "fd01::5")]
    ts = np.sort(rng.integers(T0 - 600 * 10**9, T0 + int(hours * HOUR), rows))
    pick = rng.integers(0, len(nodes), (2, rows))
    table = pa.table({
        "ts": pa.array(ts, mask=rng.random(rows) < 0.02),
        "src": pa.array([nodes[i] for i in pick[0]], pa.binary(16)),
        "dst": pa.array([nodes[i] for i in pick[1]], pa.binary(16)),
        "proto": pa.array(rng.choice([6, 17, 1], rows).astype(np.uint8)),
        "sport": pa.array(rng.integers(1, 6, rows).astype(np.uint16)),
        "dport": pa.array(rng.integers(1, 6, rows).astype(np.uint16),
                          mask=rng.random(rows) < 0.1),
        "ttl": pa.array(rng.choice([63, 64], rows).astype(np.uint8)),
        "wire_len": pa.array(rng.choice([60, 1514, 700], rows).astype(np.uint32)),
        "tcp_flags": pa.array(rng.choice([0x02, 0x12, 0x10], rows).astype(np.uint16)),
        "tcp_window": pa.array(rng.choice([0, 512], rows).astype(np.uint16)),
    })
    missing = [pa.nulls(rows, f.type) for f in PACKET_SCHEMA if f.name not in table.schema.names]
    names = [f.name for f in PACKET_SCHEMA if f.name not in table.schema.names]
    for name, column in zip(names, missing, strict=True):
        table = table.append_column(name, column)
    return table.select(PACKET_SCHEMA.names).cast(PACKET_SCHEMA)


@pytest.fixture(scope="module")
def three_hours(tmp_path_factory) -> tuple[pa.Table, Path]:
    table = synthetic(4000, 2.5)
    root = tmp_path_factory.mktemp("hours") / "packets"
    # Two inputs, so hours hold several files; the null-ts rows land in the null partition.
    half = table.num_rows // 2
    store.write_stream(table.slice(0, half).to_batches(max_chunksize=500), root, "a")
    store.write_stream(table.slice(half).to_batches(max_chunksize=500), root, "b")
    assert len(list(root.glob("date=*/hour=*/*.parquet"))) >= 6
    assert list(root.glob(f"date={store.NULL_PARTITION}/*/*.parquet"))
    return table, root


@pytest.mark.parametrize("window", ["1s", "60s", "7m", "2h", "1ns"])
def test_dataset_in_hour_chunks_equals_one_pass(three_hours, window):
    # 7m and 2h windows cross hour partitions; 1ns windows are too many for the one-key
    # layout, so they take the three-column key.
    table, root = three_hours
    spec = nf.FeatureSpec(window_ns=nf.parse_duration(window))
    chunked = list(pe.batches(root, spec))
    if window != "2h":
        assert len(chunked) > 1
    assert_same(pa.concat_tables(chunked), features(table, spec), window)


@pytest.mark.parametrize("window", ["1s", "60s", "7m"])
@pytest.mark.parametrize("order", ["capture", "shuffled"])
def test_kernel_slices_of_whole_windows_equal_one_pass(tmp_path, monkeypatch, window, order):
    """An hour is featurised in slices of row groups: whole windows each, in window order;
    row groups whose times overlap (out-of-order packets) share a slice."""
    table = synthetic(6000, 0.5, seed=5)
    if order == "shuffled":
        table = table.take(np.random.default_rng(1).permutation(table.num_rows))
    root = tmp_path / "packets"
    store.write_stream(table.to_batches(), root, "a")
    for path in root.glob("date=*/hour=*/*.parquet"):  # small row groups: many slices
        pq.write_table(pq.read_table(path), path, row_group_size=250)
    spec = nf.FeatureSpec(window_ns=nf.parse_duration(window))
    monkeypatch.setattr(pe, "SLICE_ROWS", 500)
    slices = [s for chunk in pe.chunks(pe.packet_files(root), spec.window_ns)
              for s in pe._slices(chunk, spec)]
    windows = [pa.compute.drop_null(s.column("ts")).to_numpy() // spec.window_ns
               for s in slices]
    for before, after in zip(windows, windows[1:], strict=False):
        assert before.max() < after.min()  # disjoint, in order: no window cut in two
    assert sum(len(w) for w in windows) == table.num_rows - table.column("ts").null_count
    if order == "capture" and window != "7m":
        assert len(slices) > 4
    assert_same(pa.concat_tables(pe.batches(root, spec)), features(table, spec), window)


def test_chunks_never_split_a_window():
    files = [f"d/date=2026-01-01/hour={h:02d}/x.parquet" for h in (0, 1, 2, 5)]
    for width in (10**9, 7 * 60 * 10**9, 2 * HOUR, 5 * HOUR, 17 * 10**9):
        parts = pe.chunks(files, width)
        for c in parts:
            assert c.start % width == 0 and c.end % width == 0 and c.start < c.end
        assert all(a.end <= b.start for a, b in zip(parts, parts[1:], strict=False))
        covered = {f for c in parts for f in c.files}
        assert covered == set(files)
        for c in parts:  # every file whose hour meets the range is read for it
            for f in files:
                hour = pe._partition_hour(f)
                meets = hour * HOUR < c.end and (hour + 1) * HOUR > c.start
                assert (f in c.files) == meets


def test_files_outside_the_layout_are_one_chunk(tmp_path):
    table = synthetic(300, 0.5)
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "flat.parquet")
    spec = nf.FeatureSpec()
    assert pe.chunks([str(tmp_path / "flat.parquet")], spec.window_ns)[0].start is None
    assert_same(nf.compute_features(tmp_path / "flat.parquet", spec), features(table, spec))


def test_ipv4_and_ipv6_key_layouts_agree():
    table = synthetic(2000, 0.2, seed=9)
    spec = nf.FeatureSpec()
    # Without window bounds every node takes the three-column key; with them (what
    # compute_features passes) IPv4 nodes take the one-integer key.
    wide = pe.finish(pe.compute(pl.from_arrow(table).lazy(), spec).collect(), spec)
    compact = pe.collect(table, spec, engine="streaming")
    assert wide.equals(compact)
    assert_same(compact, features(table, spec))


@pytest.mark.parametrize("missing", ["nowhere", "empty-dir"])
def test_missing_inputs_are_usage_errors(tmp_path, missing):
    path = tmp_path / missing
    if missing == "empty-dir":
        path.mkdir()
    with pytest.raises(UsageError):
        nf.compute_features(path)


def test_slices_read_ahead_in_order_and_errors_come_after_the_tables_before():
    def tables():
        yield pa.table({"i": [1]})
        yield pa.table({"i": [2]})
        raise StorageError("x.parquet: cannot read packets (damaged)")

    got = []
    with pytest.raises(StorageError, match="damaged"):
        for table in pe._read_ahead(tables()):
            got.append(table["i"][0].as_py())
    assert got == [1, 2]


def test_slices_are_read_one_ahead_and_no_further():
    made = []

    def tables():
        for i in itertools.count():
            made.append(i)
            yield pa.table({"i": [i]})

    ahead = pe._read_ahead(tables())
    assert next(ahead)["i"][0].as_py() == 0
    ahead.close()  # waits for the table being read, starts no other
    assert made == [0, 1]


@pytest.mark.parametrize("order", ["capture", "local-shuffle"])
def test_featurising_packet_files_does_not_import_pandas(tmp_path, order):
    """pyarrow imports pandas the first time it converts a Python value (about 0.25 s of a
    process, and more objects for every garbage collection after); the embedded engine's
    way from packet files to a feature table hands it none. Slices are cut both ways:
    in order (a prefix) and out of order (filtered)."""
    table = synthetic(3000, 0.5, seed=7)
    if order == "local-shuffle":  # packets a little out of order: row groups overlap
        rng = np.random.default_rng(2)
        table = table.take(np.concatenate([start + rng.permutation(300)
                                           for start in range(0, table.num_rows, 300)]))
    root, out = tmp_path / "packets", tmp_path / "features"
    store.write_stream(table.to_batches(), root, "a")
    for path in root.glob("date=*/hour=*/*.parquet"):
        pq.write_table(pq.read_table(path), path, row_group_size=250)
    script = f"""
import sys
import netsift.features as nf
from netsift.features import polars_engine as pe
pe.SLICE_ROWS = 500
run = nf.write_features({str(root)!r}, {str(out)!r})
print(run.packets, len(run.files), "pandas" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    packets, files, imported = done.stdout.split()
    assert int(packets) == table.num_rows - table.column("ts").null_count
    assert int(files) > 2  # several slices, so several cuts
    assert imported == "False"


def test_validated_only_features_do_not_import_pandas(tmp_path, lan_dataset):
    """``--validated-only`` runs its handshake query on addresses split into halves;
    those are built over numpy buffers too (a real capture: handshakes complete)."""
    script = f"""
import sys
import netsift.features as nf
run = nf.write_features({str(lan_dataset)!r}, {str(tmp_path / "features")!r},
                        nf.FeatureSpec(validated_only=True))
print(run.rows, "pandas" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    rows, imported = done.stdout.split()
    expected = pe.collect(lan_dataset, nf.FeatureSpec(validated_only=True)).num_rows
    assert int(rows) == expected > 0
    assert imported == "False"
