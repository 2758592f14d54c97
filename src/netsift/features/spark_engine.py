"""The Spark engine: compile a :class:`FeatureSpec` into DataFrame transformations.

:func:`compute` is a pure function from a packet DataFrame to a feature DataFrame: no
actions, no caching, no ordering, no Python UDFs. A batch job applies it to the packet
dataset; a Structured Streaming job applies the same function inside ``foreachBatch``
to the packets of windows the watermark has closed (streams reject the chained
aggregations and exact distinct counts used here, and the results must equal batch).

The plan is the one :func:`netsift.features.spec.plan` gives every engine: one grouped
pass for plain aggregates, and for the mode columns a (node, window, column, value) count
followed by a max over packed (count, value) integers, all columns in one pass. Windows
are integer arithmetic on ``ts`` (``ts - pmod(ts, window_ns)``), never a timestamp cast,
so they equal Polars' exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from netsift import store
from netsift.features import spec as fs

_COUNT, _PACKETS = "_count", "_packets"
_SPARK_TYPES = {True: "bigint", False: "double"}


def read_packets(spark: SparkSession, source: str | os.PathLike | Sequence,
                 columns: Sequence[str] = ()) -> DataFrame:
    """A packet dataset directory, Parquet file(s), or a list of them, as a DataFrame
    that has ``columns`` (refused in one line otherwise, as the embedded engine does).

    Local paths must hold packet files (the embedded engine's rule and errors); URIs
    (``hdfs://``, ``s3a://``) go to Spark as they are.
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    paths = [os.fspath(p) for p in ([source] if isinstance(source, str | os.PathLike)
                                    else source)]
    local = [p for p in paths if "://" not in p]
    if local:
        store.packet_files(local)
    frame = spark.read.parquet(*paths)
    store.check_packet_columns(", ".join(paths), to_arrow_schema(frame.schema), columns)
    return frame


def predicate(where: fs.Predicate) -> Column:
    """A spec predicate as a boolean column that is false (never null) on nulls."""
    column = F.col(where.column)
    if isinstance(where, fs.IsIn):
        test = column.isin(list(where.values))
    else:
        bits = column.cast("bigint")
        test = (bits.bitwiseAND(where.set) == where.set) & (bits.bitwiseAND(where.clear) == 0)
    return F.coalesce(test, F.lit(False))


def _count_all() -> Column:
    return F.count(F.lit(1))


def _main_expr(feature: fs.Feature, window_seconds: float) -> Column:
    column = F.col(feature.column) if feature.column else None
    agg = feature.agg
    if agg == "count":
        expr = _count_all()
    elif agg == "sum":
        expr = F.coalesce(F.sum(column.cast("bigint")), F.lit(0))
    elif agg == "mean":
        expr = F.avg(column.cast("double"))
    elif agg == "std":
        expr = F.stddev_samp(column.cast("double"))  # null for fewer than 2 values
    elif agg == "min":
        expr = F.min(column)
    elif agg == "max":
        expr = F.max(column)
    elif agg == "n_unique":
        expr = F.count_distinct(column)  # nulls never count
    elif agg == "share":
        matched = F.sum(F.when(predicate(feature.where), 1).otherwise(0))
        expr = matched.cast("double") / _count_all().cast("double")
    elif agg == "rate":
        expr = _count_all().cast("double") / F.lit(window_seconds)
    else:  # plan() routes modes to value-count tables
        raise AssertionError(agg)
    return expr.cast(_SPARK_TYPES[agg in fs.INTEGER_AGGS]).alias(feature.name)


def _tables(packets: DataFrame, key: list[str], tables: dict[str, Sequence[fs.Feature]]
            ) -> DataFrame:
    """Per key: every mode column's distinct count, mode and mode count, in one pass.

    Each packet becomes one (column index, value) row per mode column (``inline`` of an
    array of structs), so a single (key, column, value) count and a single (key, column)
    max over packed (count, value) integers serve every column: two shuffles where a
    table per column would take two each, plus a join each.
    """
    columns = list(tables)
    pairs = F.array(*(F.struct(F.lit(i).alias("_c"), F.col(c).cast("bigint").alias("_v"))
                      for i, c in enumerate(columns)))
    values = packets.select(*key, F.inline(pairs)).where(F.col("_v").isNotNull())
    counts = values.groupBy(*key, "_c", "_v").agg(_count_all().alias(_COUNT))
    packed = F.col(_COUNT).cast("bigint") * F.lit(1 << fs.MODE_VALUE_BITS) \
        + (F.lit(fs.MODE_VALUE_MASK) - F.col("_v"))
    top = counts.groupBy(*key, "_c").agg(F.max(packed).alias("_best"),
                                         _count_all().cast("bigint").alias("_distinct"))
    outputs = []
    for i, column in enumerate(columns):
        best = F.max(F.when(F.col("_c") == i, F.col("_best")))
        distinct = F.max(F.when(F.col("_c") == i, F.col("_distinct")))
        for f in tables[column]:
            if f.agg == "n_unique":
                outputs.append(distinct.alias(f.name))
            elif f.agg == "mode":
                outputs.append((F.lit(fs.MODE_VALUE_MASK) - best.bitwiseAND(fs.MODE_VALUE_MASK))
                               .alias(f.name))
            else:  # mode_share: divided by the packet count once joined to the main pass
                outputs.append(F.shiftright(best, fs.MODE_VALUE_BITS).alias(f.name))
    return top.groupBy(*key).agg(*outputs)


def _validated(packets: DataFrame) -> DataFrame:
    """Packets whose source completed a handshake as initiator in the packet's window."""
    conn = [fs.WINDOW_START, "src", "sport", "dst", "dport"]
    tcp = packets.where(F.col("tcp_flags").isNotNull())
    syn = tcp.where(predicate(fs.SYN_ONLY)).groupBy(*conn).agg(F.min("ts").alias("_syn"))
    ack = tcp.where(predicate(fs.ACK_ONLY)).groupBy(*conn).agg(F.max("ts").alias("_ack"))
    # A SYN-ACK travels responder -> initiator: swap ends to key it by the initiator.
    synack = tcp.where(predicate(fs.SYN_ACK)).select(
        fs.WINDOW_START, "ts", F.col("dst").alias("src"), F.col("dport").alias("sport"),
        F.col("src").alias("dst"), F.col("sport").alias("dport"),
    ).groupBy(*conn).agg(F.min("ts").alias("_synack"))
    done = syn.join(synack, conn).join(ack, conn) \
        .where((F.col("_syn") <= F.col("_synack")) & (F.col("_synack") <= F.col("_ack"))) \
        .select(fs.WINDOW_START, "src").distinct()
    return packets.join(done, [fs.WINDOW_START, "src"], "left_semi")


def compute(packets: DataFrame, spec: fs.FeatureSpec = fs.FeatureSpec()) -> DataFrame:
    """The feature table (schema ``spec.schema()``, unordered) of a packet DataFrame."""
    plan = fs.plan(spec)
    width = spec.window_ns
    df = packets.select(*spec.input_columns()) \
        .where(F.col("ts").isNotNull() & F.col(spec.node).isNotNull()) \
        .withColumn(fs.WINDOW_START, F.col("ts") - F.pmod(F.col("ts"), F.lit(width)))
    if spec.validated_only:
        df = _validated(df)
    key = [spec.node, fs.WINDOW_START]
    result = df.groupBy(*key).agg(_count_all().cast("bigint").alias(_PACKETS),
                                  *(_main_expr(f, spec.window_seconds) for f in plan.main))
    if plan.tables:
        result = result.join(_tables(df, key, plan.tables), key, "left")
    outputs = []
    for f in spec.features:
        value = F.col(f.name)
        if f.agg == "mode_share":
            value = value.cast("double") / F.col(_PACKETS).cast("double")
        elif f.agg == "n_unique":
            value = F.coalesce(value, F.lit(0))
        outputs.append(value.cast(_SPARK_TYPES[f.agg in fs.INTEGER_AGGS]).alias(f.name))
    return result.select(F.col(spec.node).alias(fs.NODE), fs.WINDOW_START, *outputs)
