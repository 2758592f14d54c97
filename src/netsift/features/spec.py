"""The NAGM feature set as data: what each feature computes, from which column, in what unit.

Every engine compiles this spec; none defines a feature of its own. A feature row
describes one *node* (the source address, or the destination with ``node="dst"``) in one
tumbling *window* of ``window_ns`` nanoseconds aligned to the epoch:
``window_start = floor(ts / window_ns) * window_ns``.

Packets take part only if they have a timestamp and a node address (non-IP frames and
pcapng Simple Packet Blocks are left out). Aggregations and their null rules (docs/features.md):

- ``count``: packets in the group. Never null.
- ``sum``: sum of the column's non-null values as int64; 0 when there are none.
- ``mean``: arithmetic mean of the non-null values; null when there are none.
- ``std``: *sample* standard deviation (ddof=1, Spark's ``stddev``) of the non-null
  values; null when fewer than two.
- ``min``/``max``: of the non-null values; null when there are none.
- ``n_unique``: distinct non-null values (nulls never count, like Spark's
  ``count(DISTINCT)``); 0 when there are none.
- ``mode``: the most frequent non-null value, ties broken by the smallest value; null
  when there are none.
- ``mode_share``: packets carrying the mode / packets in the group; null when the mode
  is null.
- ``share``: packets satisfying ``where`` / packets in the group. A packet whose tested
  column is null does not satisfy it. Never null.
- ``rate``: packets in the group / window length in seconds. Never null.

Integer results are int64, fractional ones float64, whatever the input column type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa

from netsift.errors import UsageError
from netsift.schema import (
    PACKET_SCHEMA,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
)

NODE, WINDOW_START = "node", "window_start"
KEY_COLUMNS = (NODE, WINDOW_START)
NODE_SIDES = ("src", "dst")

INTEGER_AGGS = frozenset({"count", "sum", "min", "max", "n_unique", "mode"})
FLOAT_AGGS = frozenset({"mean", "std", "mode_share", "share", "rate"})
AGGREGATIONS = INTEGER_AGGS | FLOAT_AGGS
#: Aggregations whose result is never null: their columns are declared non-nullable.
NEVER_NULL_AGGS = frozenset({"count", "sum", "n_unique", "share", "rate"})
_NEEDS_COLUMN = AGGREGATIONS - {"count", "share", "rate"}
# Modes are picked by packing (count, value) into one int64, so values must fit 32 bits.
_MODE_TYPES = (pa.uint8(), pa.uint16(), pa.uint32())


@dataclass(frozen=True)
class IsIn:
    """The packet's ``column`` value is one of ``values`` (null: no)."""

    column: str
    values: tuple[int, ...]


@dataclass(frozen=True)
class Flags:
    """Every bit of ``set`` is 1 and every bit of ``clear`` is 0 in ``column`` (null: no)."""

    column: str
    set: int
    clear: int = 0


Predicate = IsIn | Flags


@dataclass(frozen=True)
class Feature:
    """One output column: ``agg`` over ``column`` (or over packets matching ``where``)."""

    name: str
    agg: str
    column: str | None = None
    where: Predicate | None = None
    unit: str = ""
    description: str = ""

    @property
    def dtype(self) -> pa.DataType:
        return _result_type(self.agg)

    def validate(self) -> None:
        if self.agg not in AGGREGATIONS:
            raise UsageError(f"feature {self.name}: unknown aggregation {self.agg!r}")
        if (self.agg in _NEEDS_COLUMN) != (self.column is not None):
            raise UsageError(f"feature {self.name}: {self.agg} "
                             f"{'needs' if self.agg in _NEEDS_COLUMN else 'takes no'} column")
        if (self.agg == "share") != (self.where is not None):
            raise UsageError(f"feature {self.name}: only share takes a predicate, and needs one")
        for column in (self.column, self.where.column if self.where else None):
            if column is not None and column not in PACKET_SCHEMA.names:
                raise UsageError(f"feature {self.name}: no packet column {column!r}")
        if self.agg in ("mode", "mode_share") and \
                PACKET_SCHEMA.field(self.column).type not in _MODE_TYPES:
            raise UsageError(f"feature {self.name}: mode needs an unsigned integer column "
                             "of at most 32 bits")
        if self.agg in ("sum", "mean", "std", "min", "max") and \
                not pa.types.is_integer(PACKET_SCHEMA.field(self.column).type):
            raise UsageError(f"feature {self.name}: {self.agg} needs an integer column")


def _mode_pair(prefix: str, column: str, noun: str, unit: str) -> tuple[Feature, Feature]:
    return (
        Feature(f"{prefix}_mode", "mode", column, unit=unit,
                description=f"most frequent {noun} (ties: smallest)"),
        Feature(f"{prefix}_mode_share", "mode_share", column, unit="fraction",
                description=f"packets carrying the most frequent {noun} / packets"),
    )


NAGM_FEATURES: tuple[Feature, ...] = (
    Feature("packets", "count", unit="packets", description="packets"),
    Feature("bytes", "sum", "wire_len", unit="bytes", description="frame bytes on the wire"),
    Feature("length_mean", "mean", "wire_len", unit="bytes", description="mean frame length"),
    Feature("length_std", "std", "wire_len", unit="bytes",
            description="sample standard deviation of frame length"),
    Feature("length_min", "min", "wire_len", unit="bytes", description="shortest frame"),
    Feature("length_max", "max", "wire_len", unit="bytes", description="longest frame"),
    Feature("dst_addresses", "n_unique", "dst", unit="addresses",
            description="distinct destination addresses"),
    Feature("dst_ports", "n_unique", "dport", unit="ports",
            description="distinct destination ports"),
    Feature("src_ports", "n_unique", "sport", unit="ports", description="distinct source ports"),
    Feature("protocols", "n_unique", "proto", unit="protocols",
            description="distinct IP protocols"),
    Feature("tcp_share", "share", where=IsIn("proto", (PROTO_TCP,)), unit="fraction",
            description="TCP packets / packets"),
    Feature("udp_share", "share", where=IsIn("proto", (PROTO_UDP,)), unit="fraction",
            description="UDP packets / packets"),
    Feature("icmp_share", "share", where=IsIn("proto", (PROTO_ICMP, PROTO_ICMPV6)),
            unit="fraction", description="ICMP or ICMPv6 packets / packets"),
    Feature("syn_share", "share", where=Flags("tcp_flags", TCP_SYN, TCP_ACK), unit="fraction",
            description="TCP packets with SYN set and ACK clear / packets"),
    Feature("rst_share", "share", where=Flags("tcp_flags", TCP_RST), unit="fraction",
            description="TCP packets with RST set / packets"),
    Feature("fin_share", "share", where=Flags("tcp_flags", TCP_FIN), unit="fraction",
            description="TCP packets with FIN set / packets"),
    Feature("packet_rate", "rate", unit="packets/s", description="packets / window seconds"),
    *_mode_pair("dport", "dport", "destination port", "port"),
    *_mode_pair("sport", "sport", "source port", "port"),
    *_mode_pair("ttl", "ttl", "TTL / hop limit", "hops"),
    *_mode_pair("length", "wire_len", "frame length", "bytes"),
    *_mode_pair("tcp_flags", "tcp_flags", "TCP flag set", "flag bits"),
    *_mode_pair("tcp_window", "tcp_window", "TCP window value", "window units"),
    *_mode_pair("proto", "proto", "IP protocol", "protocol number"),
)

def feature_schema(features) -> pa.Schema:
    """The feature table's schema for ``(name, agg)`` pairs: node, window_start, then the
    features; keys and features that are never null (``NEVER_NULL_AGGS``) non-nullable."""
    return pa.schema([pa.field(NODE, pa.binary(16), nullable=False),
                      pa.field(WINDOW_START, pa.int64(), nullable=False),
                      *(pa.field(name, _result_type(agg), nullable=agg not in NEVER_NULL_AGGS)
                        for name, agg in features)])


def _result_type(agg: str) -> pa.DataType:
    return pa.int64() if agg in INTEGER_AGGS else pa.float64()


_UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
             "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}


def parse_duration(text: str | int) -> int:
    """``"60s"``, ``"5m"``, ``"500ms"``, ``"1h"`` (or an int of nanoseconds) -> nanoseconds."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(ns|us|ms|s|m|h|d)\s*", str(text))
        if not match:
            raise UsageError(f"bad duration {text!r}: use a whole number and a unit "
                             "(ns, us, ms, s, m, h, d), e.g. 60s")
        value = int(match.group(1)) * _UNITS_NS[match.group(2)]
    if value <= 0:
        raise UsageError(f"duration must be positive: {text!r}")
    return value


@dataclass(frozen=True)
class FeatureSpec:
    """What to compute: the feature list, the window length, the node side, the filter.

    ``validated_only`` keeps only packets whose *source* completed a TCP three-way
    handshake as initiator in the packet's window (see :func:`handshake_rule`).
    """

    features: tuple[Feature, ...] = NAGM_FEATURES
    window_ns: int = 60_000_000_000
    node: str = "src"
    validated_only: bool = False

    def __post_init__(self):
        if self.node not in NODE_SIDES:
            raise UsageError(f"node must be src or dst, not {self.node!r}")
        if not isinstance(self.window_ns, int) or self.window_ns <= 0:
            raise UsageError(f"window must be a positive number of nanoseconds: "
                             f"{self.window_ns!r}")
        names = [f.name for f in self.features]
        if len(set(names)) != len(names) or set(names) & set(KEY_COLUMNS):
            raise UsageError("feature names must be unique and not node/window_start")
        for feature in self.features:
            feature.validate()

    @property
    def window_seconds(self) -> float:
        return self.window_ns / 1e9

    def input_columns(self) -> list[str]:
        """Packet columns the computation reads, in schema order."""
        needed = {"ts", self.node}
        for f in self.features:
            needed.update(c for c in (f.column, f.where.column if f.where else None) if c)
        if self.validated_only:
            needed.update(HANDSHAKE_COLUMNS)
        return [name for name in PACKET_SCHEMA.names if name in needed]

    def schema(self) -> pa.Schema:
        """The feature table's Arrow schema: node, window_start, then features in order."""
        return feature_schema((f.name, f.agg) for f in self.features)

    def to_json(self) -> dict:
        return {
            "window_ns": self.window_ns, "node": self.node,
            "validated_only": self.validated_only,
            "features": [{"name": f.name, "agg": f.agg, "column": f.column, "unit": f.unit,
                          "description": f.description} for f in self.features],
        }


@dataclass(frozen=True)
class Plan:
    """How an engine evaluates a spec: one grouped pass plus one value-count table per column.

    ``main`` holds the features computed in one pass over the packets grouped by key
    (count, sum, mean, std, min, max, share, rate, and ``n_unique`` of columns without a
    table). ``tables`` maps a column to the features derived from its per-(key, value)
    packet counts: ``mode`` and ``mode_share`` need them, and ``n_unique`` of the same
    column is then the number of its rows for free.
    """

    main: tuple[Feature, ...]
    tables: dict[str, tuple[Feature, ...]] = field(default_factory=dict)


def plan(spec: FeatureSpec) -> Plan:
    table_columns = {f.column for f in spec.features if f.agg in ("mode", "mode_share")}
    main, tables = [], {c: [] for c in sorted(table_columns)}
    for f in spec.features:
        if f.column in table_columns and f.agg in ("mode", "mode_share", "n_unique"):
            tables[f.column].append(f)
        else:
            main.append(f)
    return Plan(tuple(main), {c: tuple(fs) for c, fs in tables.items()})


# A mode is the value with the largest (count, -value): pack both into one int64 so a
# plain max picks it, ties going to the smallest value. Counts stay below 2**31.
MODE_VALUE_BITS = 32
MODE_VALUE_MASK = (1 << MODE_VALUE_BITS) - 1

# Handshake rule (validated_only). A connection is (src, sport, dst, dport) of the
# initiator, within one window. It completed a handshake when, in that window, the
# initiator sent a SYN (SYN=1, ACK=0), the responder sent a SYN-ACK (SYN=1, ACK=1) from
# dport to sport, and the initiator sent an ACK (ACK=1, SYN=0, RST=0), with
#   first SYN time <= first SYN-ACK time <= last ACK time.
HANDSHAKE_COLUMNS = ("ts", "src", "dst", "sport", "dport", "tcp_flags")
SYN_ONLY = Flags("tcp_flags", TCP_SYN, TCP_ACK)
SYN_ACK = Flags("tcp_flags", TCP_SYN | TCP_ACK)
ACK_ONLY = Flags("tcp_flags", TCP_ACK, TCP_SYN | TCP_RST)

