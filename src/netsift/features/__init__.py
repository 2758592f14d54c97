"""Per-node, per-window NAGM behaviour features, computed by Polars or Spark.

>>> import netsift.features as nf                                        # doctest: +SKIP
>>> table = nf.compute_features("packets/", nf.FeatureSpec(window_ns=nf.parse_duration("60s")))
>>> nf.write_features("packets/", "features/", engine="spark", master="spark://host:7077")

The spec (:mod:`netsift.features.spec`) defines every feature; the engines
(``polars_engine``, ``spark_engine``) only compile it. Both give identical rows: integers
and modes exactly, floats to a relative error of 1e-9 (docs/features.md).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from netsift import store
from netsift.errors import StorageError, UsageError
from netsift.features.spec import (
    KEY_COLUMNS,
    NAGM_FEATURES,
    NODE,
    WINDOW_START,
    Feature,
    FeatureSpec,
    Flags,
    IsIn,
    feature_schema,
    parse_duration,
)

ENGINES = ("polars", "spark")
#: Parquet codecs of feature tables, both engines; zstd (level 1 from the Polars engine)
#: is the default; "none" writes fastest, 1.8x the bytes (docs/benchmarks.md).
COMPRESSIONS = ("zstd", "snappy", "gzip", "none")
SPEC_FILE = "_spec.json"
# Statistics (min/max) are kept for the keys only: readers prune by window and node, and
# statistics on every feature cost about a sixth of the encoding time.
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 1,
                   "write_statistics": list(KEY_COLUMNS)}
# Encodings for columns whose values seldom repeat within a part, where a dictionary
# costs time and saves nothing: the node (sorted within a window) shares its prefix with
# the previous one; means and deviations are split by byte for zstd. Both take less CPU
# and space than dictionaries there; Spark, Polars and pyarrow read them.
_NODE_ENCODING = "DELTA_BYTE_ARRAY"
_SPLIT_AGGS = ("mean", "std")

__all__ = [
    "COMPRESSIONS", "ENGINES", "KEY_COLUMNS", "NAGM_FEATURES", "NODE", "WINDOW_START", "Feature",
    "FeatureRun", "FeatureSpec", "Flags", "IsIn", "compute_features", "parse_duration",
    "read_features", "write_features",
]


@dataclass
class FeatureRun:
    """What :func:`write_features` did."""

    out: str
    engine: str
    rows: int
    packets: int
    seconds: float
    files: list[str]


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")


# Spark has no unsigned types: widen them as its Parquet reader does.
_SPARK_WIDER = {pa.uint8(): pa.int16(), pa.uint16(): pa.int32(), pa.uint32(): pa.int64()}


def _spark_frame(spark, source, spec: FeatureSpec):
    from netsift.features import spark_engine

    if isinstance(source, pa.Table):  # shipped through the driver: for small tables
        table = source.select(spec.input_columns())
        schema = pa.schema(
            pa.field(f.name, pa.binary() if pa.types.is_fixed_size_binary(f.type)
                     else _SPARK_WIDER.get(f.type, f.type)) for f in table.schema)
        return spark.createDataFrame(table.cast(schema))
    return spark_engine.read_packets(spark, source, spec.input_columns())


def _as_table(arrow: pa.Table, spec: FeatureSpec) -> pa.Table:
    """A Spark result as the feature schema (binary node -> 16 bytes, int widths)."""
    return arrow.select(spec.schema().names).cast(spec.schema())


def compute_features(source, spec: FeatureSpec = FeatureSpec(), *, engine: str = "polars",
                     master: str | None = None, spark=None, device: str = "cpu",
                     spark_preset: str | None = None) -> pa.Table:
    """The feature table of a packet source, sorted by window then node.

    ``source``: a packet dataset directory (``netsift ingest --out``), Parquet file(s),
    or a ``pyarrow.Table`` of the packet schema. Spark runs on ``spark`` (a session) or
    a session for ``master`` with the Spark settings of ``spark_preset`` ("gpu", "cpu":
    docs/deploy.md). ``device`` (auto|cpu|gpu) applies to the Polars engine: the GPU
    runs its lazy query on cudf-polars (docs/gpu.md).
    """
    _check_engine(engine)
    if engine == "polars":
        from netsift.features import polars_engine

        return polars_engine.collect(source, spec, device=device)
    from netsift.features import spark_engine
    from netsift.platform.spark import get_session, job_errors, quiet_pandas_check

    spark = spark or get_session(master, preset=spark_preset)
    with job_errors("the Spark features job"):
        frame = spark_engine.compute(_spark_frame(spark, source, spec), spec)
        with quiet_pandas_check():
            arrow = frame.orderBy(WINDOW_START, NODE).toArrow()
    return _as_table(arrow, spec)


_ROWS_PER_FILE = 1 << 20


def _write_parts(part: pa.Table, directory: Path, index: int, spec: FeatureSpec,
                 compression: str = "zstd") -> None:
    """``part`` as ``part-INDEX-J.parquet`` files of up to 1 Mi rows, written in parallel
    (Parquet encoding is single-threaded per file; names sort in row order)."""
    encodings = {NODE: _NODE_ENCODING} | {f.name: "BYTE_STREAM_SPLIT" for f in spec.features
                                         if f.agg in _SPLIT_AGGS}
    options = {**PARQUET_OPTIONS, "column_encoding": encodings,
               "use_dictionary": [n for n in part.column_names if n not in encodings]}
    if compression != PARQUET_OPTIONS["compression"]:
        options = {k: v for k, v in options.items() if k != "compression_level"} \
            | {"compression": compression}
    pieces = [part.slice(start, _ROWS_PER_FILE)
              for start in range(0, max(1, part.num_rows), _ROWS_PER_FILE)]
    paths = [directory / f"part-{index:05d}-{j:04d}.parquet" for j in range(len(pieces))]
    if len(pieces) == 1:
        pq.write_table(pieces[0], paths[0], **options)
        return
    with ThreadPoolExecutor(max_workers=min(len(pieces), os.cpu_count() or 1)) as pool:
        list(pool.map(lambda job: pq.write_table(job[0], job[1], **options),
                      zip(pieces, paths, strict=True)))


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the complete directory ``tmp`` (readers never see a mix)."""
    old = None
    if out.exists():
        if not out.is_dir() or any(p.suffix not in (".parquet", ".json", ".crc", "")
                                   for p in out.iterdir()):
            raise StorageError(f"{out}: exists and is not a feature table; "
                               "choose another --out")
        old = store.scratch_path(out, "old")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_out_outside(source, out: Path) -> None:
    """Refuse an ``out`` inside a packet dataset directory of ``source``: the next run
    would read the feature table as packets."""
    if isinstance(source, pa.Table):
        return
    target = out.resolve()
    for path in [source] if isinstance(source, str | os.PathLike) else source:
        root = Path(path).resolve()
        if "://" not in str(path) and root.is_dir() and target.is_relative_to(root):
            where = "is" if target == root else "is inside"
            raise UsageError(f"--out {out} {where} the packet dataset {path}: "
                             "choose a directory outside it")


def write_features(source, out: str | os.PathLike, spec: FeatureSpec = FeatureSpec(), *,
                   engine: str = "polars", master: str | None = None,
                   spark=None, device: str = "cpu", spark_preset: str | None = None,
                   compression: str = "zstd") -> FeatureRun:
    """Compute features and write them as a Parquet table directory ``out``.

    ``out`` holds ``part-*.parquet`` (``compression``: one of :data:`COMPRESSIONS`) and
    ``_spec.json`` (window, node, filter, feature definitions). It is written beside
    ``out`` and renamed into place when complete, replacing an earlier feature table
    there. With Spark on a cluster, ``out`` must be on a filesystem the driver and every
    executor share.
    """
    _check_engine(engine)
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r}: use one of "
                         f"{', '.join(COMPRESSIONS)}")
    out = Path(out).absolute()
    _check_out_outside(source, out)
    tmp = store.scratch_path(out)
    started = time.perf_counter()
    rows = packets = 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        store.clear_leftovers(out)
        if engine == "polars":
            from netsift.features import polars_engine

            tmp.mkdir()
            # Each part is written while the next is computed; at most one waits.
            with ThreadPoolExecutor(max_workers=1) as writer:
                pending = None
                for i, part in enumerate(polars_engine.batches(source, spec, device=device)):
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(_write_parts, part, tmp, i, spec, compression)
                    rows += part.num_rows
                    if "packets" in part.column_names:
                        packets += pc.sum(part.column("packets")).as_py() or 0
                if pending is not None:
                    pending.result()
        else:
            from netsift.features import spark_engine
            from netsift.platform.spark import get_session, job_errors

            spark = spark or get_session(master, preset=spark_preset)
            with job_errors("the Spark features job"):
                frame = spark_engine.compute(_spark_frame(spark, source, spec), spec)
                frame.orderBy(WINDOW_START, NODE).write.option("compression", compression) \
                    .parquet(str(tmp))
            written = read_features(tmp)
            rows = written.num_rows
            if "packets" in written.column_names:
                packets = pc.sum(written.column("packets")).as_py() or 0
        (tmp / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=1))
        _swap_in(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(f"{out}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.name for p in out.glob("part-*.parquet"))
    return FeatureRun(str(out), engine, rows, packets, time.perf_counter() - started, files)


def read_features(path: str | os.PathLike) -> pa.Table:
    """A feature table written by :func:`write_features` (either engine), in file order."""
    files = sorted(Path(path).glob("part-*.parquet"))
    if not files:
        raise UsageError(f"{path}: no feature table (no part-*.parquet files)")
    schema = _stored_schema(Path(path))
    tables = []
    for f in files:
        table = pq.read_table(f)
        if schema is not None and table.schema.names == schema.names:
            table = table.cast(schema)  # Spark: variable binary node, every column nullable
        elif NODE in table.column_names:
            i = table.column_names.index(NODE)
            table = table.set_column(i, NODE, table.column(NODE).cast(pa.binary(16)))
        tables.append(table)
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _stored_schema(path: Path) -> pa.Schema | None:
    """The schema ``_spec.json`` of a feature table describes (None: no readable spec)."""
    try:
        features = json.loads((path / SPEC_FILE).read_text())["features"]
        return feature_schema((f["name"], f["agg"]) for f in features)
    except (OSError, ValueError, KeyError, TypeError):
        return None
