"""The Polars engine: compile a :class:`FeatureSpec` into one lazy query.

The query groups packets by (node, window) once for the plain aggregates, and once per
mode column by (node, window, value) for packet counts, from which the mode, its share
and the column's distinct count follow (a max over packed (count, value) integers, which
keeps the whole query inside what the cudf-polars GPU engine executes).

Addresses are two big-endian uint64 halves (``src_hi``, ``src_lo``, ...), split on the
CPU before the query (:func:`prepare`): cudf has no binary type, hashing two integers is
much cheaper than hashing a 16-byte binary view, and the halves compare like the bytes.
:func:`collect` runs the query one time range of the packet dataset at a time (hour
partitions, cut at window boundaries), so memory is bounded by the busiest range rather
than by the dataset.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from netsift import arrays
from netsift.errors import StorageError
from netsift.features import spec as fs
from netsift.schema import PACKET_SCHEMA
from netsift.store import check_packet_columns, packet_files

_HI, _LO = "_node_hi", "_node_lo"
_KEY = [_HI, _LO, fs.WINDOW_START]
_COUNT = "_count"
_DTYPES = {True: pl.Int64, False: pl.Float64}
HOUR_NS = 3_600_000_000_000
_PARTITION = re.compile(r"date=(\d{4})-(\d{2})-(\d{2})/hour=(\d{2})/")

PacketSource = str | os.PathLike | Sequence[str | os.PathLike] | pa.Table | pl.DataFrame \
    | pl.LazyFrame


ADDRESS_COLUMNS = tuple(f.name for f in PACKET_SCHEMA
                        if pa.types.is_fixed_size_binary(f.type))


def hi(column: str) -> str:
    return f"{column}_hi"


def lo(column: str) -> str:
    return f"{column}_lo"


def prepare(table: pa.Table, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """Packets as the query reads them: ``columns`` (default all) with every address
    column replaced by its ``_hi`` / ``_lo`` uint64 halves (null where the address is)."""
    from netsift.features.kernel import _array, _halves

    columns = list(columns or table.column_names)
    out = {}
    for name in columns:
        if name in ADDRESS_COLUMNS:
            array = _array(table.column(name))
            valid = arrays.valid(array)
            high, low = _halves(array)
            out[hi(name)] = arrays.numeric(high, valid)
            out[lo(name)] = arrays.numeric(low, valid)
        else:
            out[name] = table.column(name)
    return pl.from_arrow(pa.table(out))


def _split_in_polars(packets: pl.LazyFrame) -> pl.LazyFrame:
    """:func:`prepare` as Polars expressions, for frames given with binary addresses (CPU
    only: cudf-polars has no binary type)."""
    names = packets.collect_schema().names()
    split = []
    for name in ADDRESS_COLUMNS:
        if name in names:
            pair = pl.col(name).bin.reinterpret(dtype=pl.Array(pl.UInt64, 2), endianness="big")
            split += [pair.arr.get(0).alias(hi(name)), pair.arr.get(1).alias(lo(name))]
    return packets.with_columns(split).drop([n for n in ADDRESS_COLUMNS if n in names]) \
        if split else packets


def _columns(spec: fs.FeatureSpec) -> list[str]:
    """The spec's input columns as the query reads them (addresses split)."""
    out = []
    for name in spec.input_columns():
        out += [hi(name), lo(name)] if name in ADDRESS_COLUMNS else [name]
    return out


def predicate(where: fs.Predicate) -> pl.Expr:
    """A spec predicate as a boolean expression that is false (never null) on nulls."""
    column = pl.col(where.column)
    if isinstance(where, fs.IsIn):
        test = column.is_in(list(where.values))
    else:
        test = column.cast(pl.Int64)
        test = ((test & where.set) == where.set) & ((test & where.clear) == 0)
    return test.fill_null(False)


def _main_expr(feature: fs.Feature, window_seconds: float) -> pl.Expr:
    column = pl.col(feature.column) if feature.column else None
    agg = feature.agg
    if agg == "count":
        expr = pl.len()
    elif agg == "sum":
        expr = column.cast(pl.Int64).sum()  # 0 when all null, like the spec says
    elif agg == "mean":
        expr = column.cast(pl.Float64).mean()
    elif agg == "std":
        expr = column.cast(pl.Float64).std(ddof=1)
    elif agg == "min":
        expr = column.min()
    elif agg == "max":
        expr = column.max()
    elif agg == "n_unique":  # null is no value: count it out where it occurs
        expr = column.n_unique() - (column.null_count() > 0).cast(pl.UInt32)
    elif agg == "share":
        expr = predicate(feature.where).sum().cast(pl.Float64) / pl.len().cast(pl.Float64)
    elif agg == "rate":
        expr = pl.len().cast(pl.Float64) / window_seconds
    else:  # plan() routes modes to value-count tables
        raise AssertionError(agg)
    return expr.cast(_DTYPES[agg in fs.INTEGER_AGGS]).alias(feature.name)


def _packed(column: str) -> pl.Expr:
    return pl.col(_COUNT).cast(pl.Int64) * (1 << fs.MODE_VALUE_BITS) \
        + (fs.MODE_VALUE_MASK - pl.col(column).cast(pl.Int64))


_VALUE_BITS = {pa.uint8(): 8, pa.uint16(): 16, pa.uint32(): 32}


def _table(packets: pl.LazyFrame, key: list[str], key_bits: int | None, column: str,
           features: Sequence[fs.Feature]) -> pl.LazyFrame:
    """Per key: the column's distinct count, mode and mode count, from (key, value) counts.

    With a one-column key of ``key_bits`` bits, key and value share one uint64 when they
    fit: Polars groups one integer column much faster than two.
    """
    present = packets.filter(pl.col(column).is_not_null())
    value_bits = _VALUE_BITS[PACKET_SCHEMA.field(column).type]
    if key_bits is not None and key_bits + value_bits <= 64:
        scale = 1 << value_bits
        pair = (pl.col(key[0]) * scale + pl.col(column).cast(pl.UInt64)).alias("_pair")
        counts = present.group_by(pair).agg(pl.len().alias(_COUNT)).select(
            (pl.col("_pair") // scale).alias(key[0]), (pl.col("_pair") % scale).alias(column),
            _COUNT)
    else:
        counts = present.group_by([*key, column]).agg(pl.len().alias(_COUNT))
    best = pl.col("_best")
    top = counts.group_by(key).agg(_packed(column).max().alias("_best"),
                                   pl.len().cast(pl.Int64).alias("_distinct"))
    outputs = []
    for f in features:
        if f.agg == "n_unique":
            outputs.append(pl.col("_distinct").alias(f.name))
        elif f.agg == "mode":
            outputs.append((fs.MODE_VALUE_MASK - (best & fs.MODE_VALUE_MASK)).alias(f.name))
        else:  # mode_share: the packet count is divided once the main pass is joined
            outputs.append((best // (1 << fs.MODE_VALUE_BITS)).alias(f.name))
    return top.select(*key, *outputs)


def _validated(packets: pl.LazyFrame) -> pl.LazyFrame:
    """Packets whose source completed a handshake as initiator in the packet's window."""
    src, dst = [hi("src"), lo("src")], [hi("dst"), lo("dst")]
    conn = [fs.WINDOW_START, *src, "sport", *dst, "dport"]
    tcp = packets.filter(pl.col("tcp_flags").is_not_null())
    syn = tcp.filter(predicate(fs.SYN_ONLY)).group_by(conn).agg(pl.col("ts").min().alias("_syn"))
    ack = tcp.filter(predicate(fs.ACK_ONLY)).group_by(conn).agg(pl.col("ts").max().alias("_ack"))
    # A SYN-ACK travels responder -> initiator: swap ends to key it by the initiator.
    synack = tcp.filter(predicate(fs.SYN_ACK)).select(
        fs.WINDOW_START, "ts", *(pl.col(d).alias(s) for s, d in zip(src, dst, strict=True)),
        *(pl.col(s).alias(d) for s, d in zip(src, dst, strict=True)),
        sport="dport", dport="sport",
    ).group_by(conn).agg(pl.col("ts").min().alias("_synack"))
    done = syn.join(synack, on=conn).join(ack, on=conn) \
        .filter((pl.col("_syn") <= pl.col("_synack")) & (pl.col("_synack") <= pl.col("_ack"))) \
        .select(fs.WINDOW_START, *src).unique()
    return packets.join(done, on=[fs.WINDOW_START, *src], how="semi")


def _wide_distinct(packets: pl.LazyFrame, key: list[str], column: str,
                   features: Sequence[fs.Feature]) -> pl.LazyFrame:
    """Per key: distinct non-null addresses of ``column``, from (key, hi, lo) groups."""
    pairs = packets.filter(pl.col(hi(column)).is_not_null()) \
        .group_by([*key, hi(column), lo(column)]).agg()
    counted = pairs.group_by(key).agg(pl.len().cast(pl.Int64).alias("_distinct"))
    return counted.select(*key, *(pl.col("_distinct").alias(f.name) for f in features))


def _aggregate(lf: pl.LazyFrame, key: list[str], spec: fs.FeatureSpec,
               key_bits: int | None = None) -> pl.LazyFrame:
    plan = fs.plan(spec)
    wide = [f for f in plan.main if f.column in ADDRESS_COLUMNS]
    result = lf.group_by(key).agg(
        pl.len().cast(pl.Int64).alias("_packets"),
        *(_main_expr(f, spec.window_seconds) for f in plan.main if f not in wide))
    for column in dict.fromkeys(f.column for f in wide):
        table = _wide_distinct(lf, key, column, [f for f in wide if f.column == column])
        result = result.join(table, on=key, how="left")
    for column, features in plan.tables.items():
        table = _table(lf, key, key_bits, column, features)
        result = result.join(table, on=key, how="left")
    outputs = []
    for f in spec.features:
        value = pl.col(f.name)
        if f.agg == "mode_share":
            value = value.cast(pl.Float64) / pl.col("_packets").cast(pl.Float64)
        elif f.agg == "n_unique":
            value = value.fill_null(0)
        outputs.append(value.cast(_DTYPES[f.agg in fs.INTEGER_AGGS]).alias(f.name))
    return result.select(*key, *outputs)


# IPv4-mapped addresses (::ffff:a.b.c.d) have high half 0 and low half 0xffff_aabbccdd.
_V4_LO = 0xFFFF << 32
_COMPACT = "_key"
_LOW32 = 1 << 32
_ADDRESS_BITS = 32


def compute(packets: pl.LazyFrame, spec: fs.FeatureSpec = fs.FeatureSpec(),
            first_window: int | None = None, windows: int | None = None) -> pl.LazyFrame:
    """The feature query over a packet frame; node as ``_node_hi``/``_node_lo`` halves.

    ``first_window`` and ``windows`` (the window indices ``ts // window_ns`` the packets
    fall in, when known) let IPv4 nodes group on one integer, ``ipv4 << b | window -
    first_window`` with ``b`` bits for the window, which Polars hashes several times
    faster than three columns; IPv6 nodes keep the three-column key. A node is IPv4 or
    not, so no group spans both parts.

    Rows come out unordered; :func:`finish` turns a collected result into the feature
    table (node as 16 bytes, sorted by window then node).
    """
    width = spec.window_ns
    lf = _split_in_polars(packets).select(_columns(spec)) \
        .filter(pl.col("ts").is_not_null() & pl.col(hi(spec.node)).is_not_null()) \
        .with_columns(((pl.col("ts") // width) * width).alias(fs.WINDOW_START))
    if spec.validated_only:
        lf = _validated(lf)
    lf = lf.with_columns(pl.col(hi(spec.node)).alias(_HI), pl.col(lo(spec.node)).alias(_LO))
    window_bits = max(1, (windows - 1).bit_length()) if windows else 0
    if first_window is None or not 0 < window_bits <= 64 - _ADDRESS_BITS:
        return _aggregate(lf, _KEY, spec)
    is_v4 = (pl.col(_HI) == 0) & ((pl.col(_LO) // _LOW32) == 0xFFFF)
    slots = 1 << window_bits
    v4 = lf.filter(is_v4).with_columns(
        ((pl.col(_LO) % _LOW32) * slots + (pl.col("ts") // width - first_window).cast(pl.UInt64))
        .alias(_COMPACT))
    v4 = _aggregate(v4, [_COMPACT], spec, _ADDRESS_BITS + window_bits).select(
        pl.lit(0, pl.UInt64).alias(_HI),
        (pl.col(_COMPACT) // slots + _V4_LO).alias(_LO),
        (((pl.col(_COMPACT) % slots).cast(pl.Int64) + first_window) * width)
        .alias(fs.WINDOW_START),
        pl.exclude(_COMPACT))
    return pl.concat([v4, _aggregate(lf.filter(~is_v4), _KEY, spec)])


def _node_bytes(hi: pa.Array, lo: pa.Array) -> pa.Array:
    """Two uint64 halves back to 16-byte big-endian addresses."""
    raw = np.empty((len(hi), 2), dtype=">u8")
    raw[:, 0] = hi.to_numpy()
    raw[:, 1] = lo.to_numpy()
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(hi),
                                                [None, pa.py_buffer(raw.tobytes())])


def finish(result: pl.DataFrame, spec: fs.FeatureSpec) -> pa.Table:
    """A collected :func:`compute` result as the feature table, sorted by window, node."""
    result = result.sort(fs.WINDOW_START, _HI, _LO)
    table = result.to_arrow()
    node = _node_bytes(table.column(_HI).combine_chunks(), table.column(_LO).combine_chunks())
    columns = [node, *(table.column(name) for name in spec.schema().names[1:])]
    return pa.Table.from_arrays(columns, schema=spec.schema())


@dataclass(frozen=True)
class _Chunk:
    """Packets with ts in [start, end) (None: unbounded), read from ``files``."""

    files: tuple[str, ...]
    start: int | None = None
    end: int | None = None


def _partition_hour(path: str) -> int | None:
    """Hours since the epoch of a ``date=YYYY-MM-DD/hour=HH/`` file, None otherwise."""
    import datetime as dt

    match = _PARTITION.search(Path(path).as_posix())
    if not match:
        return None
    y, m, d, h = (int(g) for g in match.groups())
    return int(dt.datetime(y, m, d, h, tzinfo=dt.UTC).timestamp()) // 3600


def chunks(files: Sequence[str], window_ns: int, hours_per_chunk: int = 1) -> list[_Chunk]:
    """Split hour-partitioned files into time ranges whose edges are window boundaries.

    A window never spans two chunks, so chunk results concatenate into the full result.
    Files outside the ``date=/hour=`` layout (or in the null-time partition) make one
    chunk of everything, which is always correct.
    """
    by_hour: dict[int, list[str]] = {}
    for f in files:
        hour = _partition_hour(f)
        if hour is None:
            if "__HIVE_DEFAULT_PARTITION__" in f:
                continue  # rows without a timestamp belong to no window
            return [_Chunk(tuple(files))]
        by_hour.setdefault(hour, []).append(f)
    hours = sorted(by_hour)
    result: list[_Chunk] = []
    i = 0
    while i < len(hours):
        start = hours[i] * HOUR_NS // window_ns * window_ns
        if result and result[-1].end is not None and start < result[-1].end:
            start = result[-1].end
        end = -(-(hours[i] + hours_per_chunk) * HOUR_NS // window_ns) * window_ns
        members = [h for h in hours if h * HOUR_NS < end and (h + 1) * HOUR_NS > start]
        result.append(_Chunk(tuple(f for h in members for f in by_hour[h]), start, end))
        while i < len(hours) and (hours[i] + 1) * HOUR_NS <= end:
            i += 1
    return result


#: ``engine`` value that runs the compiled kernel (:mod:`netsift.features.kernel`); any
#: other value is a Polars collect engine for the lazy query ("streaming", "in-memory",
#: or a ``pl.GPUEngine``).
KERNEL = "kernel"


def _kernel_input(table: pa.Table, spec: fs.FeatureSpec) -> pa.Table:
    """Packets the kernel takes: the spec's columns, rows with a time and a node."""
    import pyarrow.compute as pc

    table = table.select(spec.input_columns())
    keep = pc.and_(pc.is_valid(table.column("ts")), pc.is_valid(table.column(spec.node)))
    return table if pc.all(keep).as_py() else table.filter(keep)


def _kernel(table: pa.Table, spec: fs.FeatureSpec) -> pa.Table:
    from netsift.features import kernel

    table = _kernel_input(table, spec)
    if spec.validated_only:
        width = spec.window_ns
        frame = prepare(table, fs.HANDSHAKE_COLUMNS).lazy().with_row_index("_row") \
            .with_columns(((pl.col("ts") // width) * width).alias(fs.WINDOW_START))
        rows = _validated(frame).select("_row").collect().to_series().sort()
        table = table.take(rows.to_arrow())
    return kernel.evaluate(table, spec)


def _unreadable(path: str, exc: Exception) -> StorageError:
    """A damaged packet file as one line that names it."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StorageError(f"{path}: cannot read packets ({reason})")


def _read_chunk(chunk: _Chunk, spec: fs.FeatureSpec) -> pa.Table:
    """The chunk's packets, the spec's columns. Rows without a time or a node may remain
    (the engines drop them)."""
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(list(chunk.files), format="parquet")
        check_packet_columns(", ".join(chunk.files), dataset.schema, spec.input_columns())
        if chunk.start is None or _whole_hours(chunk):
            # An hour partition holds only that hour's packets: nothing to cut away.
            return dataset.to_table(columns=spec.input_columns())
        where = (ds.field("ts") >= chunk.start) & (ds.field("ts") < chunk.end)
        return dataset.to_table(columns=spec.input_columns(), filter=where)
    except (OSError, pa.ArrowInvalid) as exc:
        raise _unreadable(", ".join(chunk.files), exc) from None


#: Packets the kernel takes at once, about (whole windows): its working memory is a few
#: hundred bytes a packet, so an hour partition is featurised in slices of whole windows.
SLICE_ROWS = 2000000


def _read_rows(path: str, start: int, count: int, schema: pa.Schema) -> pa.Table:
    """Rows ``start:start + count`` of a Parquet file, the columns of ``schema``.

    Polars decodes Parquet with less CPU than pyarrow, most of all 16-byte addresses,
    which it reads as binary views whose values lie end to end: they are handed on as
    the fixed-size binary pyarrow would give, over the same memory.
    """
    from netsift.features.kernel import fixed_binary16

    frame = pl.scan_parquet(path, hive_partitioning=False).slice(start, count) \
        .select(schema.names)
    try:
        table = frame.collect().to_arrow(compat_level=pl.CompatLevel.newest())
    except pl.exceptions.PolarsError as exc:
        raise _unreadable(path, exc) from None
    for i, field in enumerate(table.schema):
        if pa.types.is_binary_view(field.type) and schema.field(field.name).type == \
                pa.binary(16):
            column = pa.chunked_array([fixed_binary16(a) for a in table.column(i).chunks],
                                      pa.binary(16))
            table = table.set_column(i, field.name, column)
    return table if table.schema.equals(schema) else table.cast(schema)


# The cuts below are numpy, not pyarrow compute: a Python value handed to pyarrow (a
# bound, a fill value) makes it import pandas (netsift.arrays).
def _times_in(ts: pa.ChunkedArray, start: int | None, end: int, timeless: bool) -> np.ndarray:
    """Per row, whether ``start <= ts < end`` (``start`` None: no lower bound); rows
    without a time get ``timeless``."""
    parts = [np.zeros(0, np.bool_)]
    for chunk in ts.chunks:
        values = arrays.values(chunk)
        inside = values < end
        if start is not None:
            inside &= values >= start
        if chunk.null_count:
            inside = np.where(arrays.valid(chunk), inside, timeless)
        parts.append(inside)
    return np.concatenate(parts)


def _slices(chunk: _Chunk, spec: fs.FeatureSpec) -> Iterator[pa.Table]:
    """The chunk's packets in slices of whole windows, in window order.

    Row groups are read in the order of their first ``ts`` (Parquet statistics), runs of
    consecutive ones of a file at a time. Once ``SLICE_ROWS`` packets are held, those of
    windows before the next row group's first window are complete: they are a slice, the
    rest waits for the next. Packets in capture order (what ``netsift ingest`` writes)
    give slices of about ``SLICE_ROWS``; out of order, slices grow (the same result,
    more memory), and files without statistics are read whole.
    """
    import pyarrow.parquet as pq

    width, columns = spec.window_ns, spec.input_columns()
    lo_ns = chunk.start if chunk.start is not None else -(2**63)
    hi_ns = chunk.end - 1 if chunk.end is not None else 2**63 - 1
    cut_range = chunk.start is not None and not _whole_hours(chunk)
    groups = []  # (first window, file, row group, first row, rows)
    kinds = None
    for path in chunk.files:
        try:
            reader = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise _unreadable(path, exc) from None
        metadata, arrow = reader.metadata, reader.schema_arrow
        names = arrow.names
        types = [arrow.field(c).type if c in names else None for c in columns]
        check_packet_columns(path, arrow, columns, all_present=False)
        if None in types or (kinds is not None and types != kinds):
            # a column missing (the dataset reader reports it) or typed differently
            # between files (the dataset reader unifies): read the chunk as a whole
            yield _read_chunk(chunk, spec)
            return
        kinds = types
        ts = names.index("ts")
        first_row = 0
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            stats = group.column(ts).statistics
            start, first_row = first_row, first_row + group.num_rows
            if stats is not None and stats.null_count == group.num_rows:
                continue  # no packet with a time: in no window
            if stats is None or not stats.has_min_max:
                yield _read_chunk(chunk, spec)
                return
            if max(stats.min, lo_ns) <= min(stats.max, hi_ns):
                groups.append((max(stats.min, lo_ns) // width, path, g, start,
                               group.num_rows))
    if not groups:
        yield _read_chunk(chunk, spec)  # nothing in range: the empty table, typed
        return
    schema = pa.schema([pa.field(c, t) for c, t in zip(columns, kinds, strict=True)])
    groups.sort(key=lambda group: group[0])
    held: list[pa.Table] = []
    rows, sliced, i = 0, False, 0
    while i < len(groups):
        _, path, g, start, count = groups[i]
        j = i + 1
        while j < len(groups) and rows + count < SLICE_ROWS and groups[j][1] == path \
                and groups[j][2] == groups[j - 1][2] + 1:
            count += groups[j][4]
            j += 1
        table = _read_rows(path, start, count, schema)
        if cut_range:  # rows without a time are dropped, as a filter drops them
            inside = _times_in(table.column("ts"), chunk.start, chunk.end, timeless=False)
            table = table.filter(arrays.boolean(inside))
        held.append(table)
        rows += table.num_rows
        i = j
        if rows < SLICE_ROWS or i == len(groups):
            continue
        table = pa.concat_tables(held)
        # Packets without a time go with the slice (the kernel drops them).
        ready = _times_in(table.column("ts"), None, groups[i][0] * width, timeless=True)
        done = int(np.count_nonzero(ready))
        if ready[:done].all():
            slice_, rest = table.slice(0, done), table.slice(done)  # in order: no copy
        else:
            slice_, rest = table.filter(arrays.boolean(ready)), table.filter(arrays.boolean(~ready))
        if slice_.num_rows:
            yield slice_
            sliced = True
        held, rows = [rest], rest.num_rows
    table = pa.concat_tables(held)
    if table.num_rows or not sliced:
        yield table


def _read_ahead(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """``tables``, each next one read in a thread while the caller works on the one it
    has: reading and decoding leave cores idle between their parallel parts, and so does
    the kernel. One table is held beyond the caller's; errors reach the caller in order.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="netsift-read") as reader:
        ahead = reader.submit(next, tables, None)
        while (table := ahead.result()) is not None:
            ahead = reader.submit(next, tables, None)
            yield table


def _whole_hours(chunk: _Chunk) -> bool:
    """Whether every file of ``chunk`` is an hour partition inside [start, end)."""
    for f in chunk.files:
        hour = _partition_hour(f)
        if hour is None or hour * HOUR_NS < chunk.start or (hour + 1) * HOUR_NS > chunk.end:
            return False
    return True


def _device_engine(engine, spec: fs.FeatureSpec, device: str):
    """GPU branch: ``device`` (auto|cpu|gpu) -> collect engine, by netsift.platform.gpu.

    The GPU runs the lazy query on cudf-polars; the kernel is CPU-only. The plan checked
    is the query over an empty packet frame: the same constructs as every chunk's.
    """
    if device == "cpu":
        return engine
    from netsift.platform import gpu

    def plan():
        empty = prepare(arrays.empty(PACKET_SCHEMA), spec.input_columns()).lazy()
        return compute(empty, spec), empty.collect_schema()

    return gpu.engine_for(plan, device, engine)


def batches(source: PacketSource, spec: fs.FeatureSpec = fs.FeatureSpec(),
            engine=KERNEL, device: str = "cpu") -> Iterator[pa.Table]:
    """The feature table in pieces, in (window, node) order: one per slice of whole
    windows (the kernel) or per time range (a Polars collect engine).

    ``device``: ``cpu`` runs ``engine``; ``gpu`` the lazy query on the cudf-polars GPU
    engine (:func:`netsift.platform.gpu.engine_for`), ``auto`` that where it can run.
    """
    engine = _device_engine(engine, spec, device)
    if isinstance(source, pa.Table | pl.DataFrame | pl.LazyFrame):
        if engine == KERNEL:
            table = source if isinstance(source, pa.Table) else (
                source.collect() if isinstance(source, pl.LazyFrame) else source).to_arrow()
            yield _kernel(table, spec)
            return
        table = source if isinstance(source, pa.Table) else (
            source.collect() if isinstance(source, pl.LazyFrame) else source).to_arrow()
        frame = prepare(table, spec.input_columns()).lazy()
        bounds = frame.select(pl.col("ts").min().alias("first"),
                              pl.col("ts").max().alias("last")).collect()
        first, last = bounds.row(0)
        if first is None:
            yield arrays.empty(spec.schema())
            return
        first_window, windows = first // spec.window_ns, last // spec.window_ns \
            - first // spec.window_ns + 1
        yield finish(compute(frame, spec, first_window, windows).collect(engine=engine), spec)
        return
    if engine == KERNEL:
        slices = (table for chunk in chunks(packet_files(source), spec.window_ns)
                  for table in _slices(chunk, spec))
        yield from (_kernel(table, spec) for table in _read_ahead(slices))
        return
    for chunk in chunks(packet_files(source), spec.window_ns):
        lf = prepare(_read_chunk(chunk, spec), spec.input_columns()).lazy()
        first_window = windows = None
        if chunk.start is not None:
            first_window = chunk.start // spec.window_ns
            windows = -(-chunk.end // spec.window_ns) - first_window
        yield finish(compute(lf, spec, first_window, windows).collect(engine=engine), spec)


def collect(source: PacketSource, spec: fs.FeatureSpec = fs.FeatureSpec(),
            engine=KERNEL, device: str = "cpu") -> pa.Table:
    """The whole feature table as one Arrow table (``device``: see :func:`batches`)."""
    parts = list(batches(source, spec, engine, device))
    return pa.concat_tables(parts) if parts else arrays.empty(spec.schema())
