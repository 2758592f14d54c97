"""The feature spec compiled into one numba kernel: the CPU path of the embedded engine.

The Polars query (:mod:`netsift.features.polars_engine`) groups every packet by (node,
window) several times over, with hash tables as large as the number of node-windows.
This kernel instead uses what a capture already is: packets of one window are a
contiguous time range. It splits a time range into windows (a counting sort on the
window index), then, one window per thread, gives each node a dense id (an open
addressing hash table sized by that window's nodes, which stays in cache), sorts the
window's packets by node (a counting sort again), and evaluates every feature of the
spec over each node's packets in one pass, with small sorts for modes and distinct
counts. No hash table ever spans the dataset, and every step is linear except those
per-node sorts.

The spec drives it as data: each feature becomes an opcode, a column slot and a
predicate (:func:`compile_spec`); adding a feature to the spec needs no kernel change.
Results equal the Polars query's and Spark's (the parity suite runs it as an engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numba as nb
import numpy as np
import pyarrow as pa

from netsift.features import spec as fs
from netsift.schema import PACKET_SCHEMA

# Opcodes, one per aggregation.
COUNT, SUM, MEAN, STD, MIN, MAX, NUNIQUE, MODE, MODE_SHARE, SHARE, RATE = range(11)
_OPCODES = {"count": COUNT, "sum": SUM, "mean": MEAN, "std": STD, "min": MIN, "max": MAX,
            "n_unique": NUNIQUE, "mode": MODE, "mode_share": MODE_SHARE, "share": SHARE,
            "rate": RATE}
PRED_NONE, PRED_ISIN, PRED_FLAGS = 0, 1, 2
NULL = -1  # narrow columns are unsigned, at most 32 bits: -1 never is a value
_EMPTY = np.int64(-1)


@dataclass(frozen=True)
class Program:
    """A spec as arrays the kernel reads.

    Narrow columns (unsigned, at most 32 bits) are one int64 matrix, a row per column,
    with NULL for null; wide columns (addresses) are (hi, lo) uint64 pairs and only feed
    ``n_unique``. Per narrow column the kernel computes, once per group, what the
    features need: ``stat_of_slot`` (distinct count and mode) and ``numeric_of_slot``
    (sum, count, min, max, and the squared deviations if ``std_of_slot``).
    """

    narrow: tuple[str, ...]
    wide: tuple[str, ...]
    opcode: np.ndarray        # per feature
    slot: np.ndarray          # narrow column; wide column for a wide n_unique; -1 none
    is_wide: np.ndarray       # bool per feature
    out_index: np.ndarray     # column in the int or float output matrix
    is_float: np.ndarray      # bool per feature
    pred_kind: np.ndarray
    pred_slot: np.ndarray
    pred_set: np.ndarray      # Flags: bits that must be set
    pred_clear: np.ndarray    # Flags: bits that must be clear
    pred_values: np.ndarray   # IsIn: values, padded with NULL (features x max values)
    stat_of_slot: np.ndarray  # narrow column -> per-group stats row, or -1
    numeric_of_slot: np.ndarray
    std_of_slot: np.ndarray   # bool per narrow column
    n_stats: int
    n_numeric: int
    n_int: int
    n_float: int


@lru_cache(maxsize=32)
def compile_spec(spec: fs.FeatureSpec) -> Program:
    columns = [f.column for f in spec.features if f.column] + \
        [f.where.column for f in spec.features if f.where]
    wide_types = {name for name in columns if pa.types.is_fixed_size_binary(
        PACKET_SCHEMA.field(name).type)}
    narrow = tuple(dict.fromkeys(c for c in columns if c not in wide_types))
    wide = tuple(dict.fromkeys(c for c in columns if c in wide_types))
    n = len(spec.features)
    opcode, slot = np.zeros(n, np.int64), np.full(n, -1, np.int64)
    is_wide, is_float = np.zeros(n, np.bool_), np.zeros(n, np.bool_)
    out_index = np.zeros(n, np.int64)
    pred_kind, pred_slot = np.zeros(n, np.int64), np.full(n, -1, np.int64)
    pred_set, pred_clear = np.zeros(n, np.int64), np.zeros(n, np.int64)
    width = max([len(f.where.values) for f in spec.features
                 if isinstance(f.where, fs.IsIn)] or [1])
    pred_values = np.full((n, width), NULL, np.int64)
    slots = max(1, len(narrow))
    stat_of_slot = np.full(slots, -1, np.int64)
    numeric_of_slot = np.full(slots, -1, np.int64)
    std_of_slot = np.zeros(slots, np.bool_)
    n_stats = n_numeric = n_int = n_float = 0
    for i, f in enumerate(spec.features):
        opcode[i] = _OPCODES[f.agg]
        if f.column is not None:
            if f.column in wide:
                if f.agg != "n_unique":
                    raise AssertionError(f"{f.name}: address columns only take n_unique")
                is_wide[i], slot[i] = True, wide.index(f.column)
            else:
                c = slot[i] = narrow.index(f.column)
                if f.agg in ("n_unique", "mode", "mode_share") and stat_of_slot[c] < 0:
                    stat_of_slot[c], n_stats = n_stats, n_stats + 1
                if f.agg in ("sum", "mean", "std", "min", "max") and numeric_of_slot[c] < 0:
                    numeric_of_slot[c], n_numeric = n_numeric, n_numeric + 1
                std_of_slot[c] |= f.agg == "std"
        if isinstance(f.where, fs.IsIn):
            pred_kind[i], pred_slot[i] = PRED_ISIN, narrow.index(f.where.column)
            pred_values[i, :len(f.where.values)] = f.where.values
        elif isinstance(f.where, fs.Flags):
            pred_kind[i], pred_slot[i] = PRED_FLAGS, narrow.index(f.where.column)
            pred_set[i], pred_clear[i] = f.where.set, f.where.clear
        is_float[i] = f.agg in fs.FLOAT_AGGS
        if is_float[i]:
            out_index[i], n_float = n_float, n_float + 1
        else:
            out_index[i], n_int = n_int, n_int + 1
    return Program(narrow, wide, opcode, slot, is_wide, out_index, is_float, pred_kind,
                   pred_slot, pred_set, pred_clear, pred_values, stat_of_slot,
                   numeric_of_slot, std_of_slot, n_stats, n_numeric, n_int, n_float)


# -- kernels -----------------------------------------------------------------------------

_OPTS = {"nogil": True, "cache": True, "boundscheck": False}
_HASH_ABOVE = 16  # group size from which a hash set beats sorting (address columns)
# Columns whose values stay below this are counted in an array slot per value (ports,
# TTLs, flags, frame lengths up to the largest snap length): faster than sorting from
# two values on. Larger values are sorted.
_MAX_DOMAIN = 1 << 18
_V4_MAPPED = np.uint64(0xFFFF)


@nb.njit(**_OPTS)
def _mix(hi, lo):
    """A 64-bit hash of an address (splitmix64 finaliser over both halves)."""
    x = hi * np.uint64(0x9E3779B97F4A7C15) + lo
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@nb.njit(**_OPTS)
def _window_order(window, n_windows):
    """Packet indices grouped by dense window id (stable), and each window's start offset."""
    n = window.shape[0]
    starts = np.zeros(n_windows + 1, np.int64)
    for i in range(n):
        starts[window[i] + 1] += 1
    for w in range(n_windows):
        starts[w + 1] += starts[w]
    fill = starts[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        w = window[i]
        order[fill[w]] = i
        fill[w] += 1
    return order, starts


@nb.njit(parallel=True, **_OPTS)
def _window_ids(ts, width, first_window, out):
    for i in nb.prange(ts.shape[0]):
        out[i] = ts[i] // width - first_window


@nb.njit(**_OPTS)
def _radix_order32(keys):
    """Indices that sort 32-bit ``keys`` (two 16-bit counting passes)."""
    n = keys.shape[0]
    index = np.arange(n)
    scratch = np.empty(n, np.int64)
    for shift in (0, 16):
        counts = np.zeros(65537, np.int64)
        for i in range(n):
            counts[((keys[index[i]] >> shift) & 0xFFFF) + 1] += 1
        for d in range(65536):
            counts[d + 1] += counts[d]
        for i in range(n):
            digit = (keys[index[i]] >> shift) & 0xFFFF
            scratch[counts[digit]] = index[i]
            counts[digit] += 1
        index, scratch = scratch, index
    return index


@nb.njit(**_OPTS)
def _rank_order(found_hi, found_lo, count):
    """Indices of distinct nodes in (hi, lo) order: the order their bytes compare in."""
    all_v4 = True
    for e in range(count):
        if found_hi[e] != 0 or (found_lo[e] >> np.uint64(32)) != _V4_MAPPED:
            all_v4 = False
            break
    if all_v4 and count > 256:  # the usual case: IPv4 nodes only, keys are 32 bits
        keys = np.empty(count, np.int64)
        for e in range(count):
            keys[e] = np.int64(found_lo[e] & np.uint64(0xFFFFFFFF))
        return _radix_order32(keys)
    by_lo = np.argsort(found_lo[:count])  # keys are distinct: any sort is stable enough
    return by_lo[np.argsort(found_hi[:count][by_lo], kind="mergesort")]


@nb.njit(**_OPTS)
def _assign_nodes(order, lo_i, hi_i, node_raw, local, first):
    """Dense node ids for packets ``order[lo_i:hi_i]``, then renumbered in address order.

    ``node_raw`` holds each packet's address as two big-endian uint64 words. Writes each
    packet's node rank into ``local`` (by position in ``order``) and, for rank ``r``, the
    index of a packet of that node into ``first[lo_i + r]``; returns the number of nodes.
    """
    capacity = 64
    while capacity < 2 * min(hi_i - lo_i, 4096):
        capacity *= 2
    table = np.full(capacity, _EMPTY, np.int64)
    found_hi = np.empty(capacity // 2 + 1, np.uint64)
    found_lo = np.empty(capacity // 2 + 1, np.uint64)
    found_at = np.empty(capacity // 2 + 1, np.int64)
    count = 0
    for p in range(lo_i, hi_i):
        i = order[p]
        h, low_half = _byteswap(node_raw[2 * i]), _byteswap(node_raw[2 * i + 1])
        slot = np.int64(_mix(h, low_half) & np.uint64(capacity - 1))
        while True:
            entry = table[slot]
            if entry == _EMPTY:
                table[slot] = count
                found_hi[count], found_lo[count], found_at[count] = h, low_half, i
                local[p] = count
                count += 1
                break
            if found_hi[entry] == h and found_lo[entry] == low_half:
                local[p] = entry
                break
            slot = (slot + 1) & (capacity - 1)
        if 2 * count >= capacity:  # grow: rehash the ids found so far
            capacity *= 2
            table = np.full(capacity, _EMPTY, np.int64)
            bigger_hi = np.empty(capacity // 2 + 1, np.uint64)
            bigger_lo = np.empty(capacity // 2 + 1, np.uint64)
            bigger_at = np.empty(capacity // 2 + 1, np.int64)
            bigger_hi[:count] = found_hi[:count]
            bigger_lo[:count] = found_lo[:count]
            bigger_at[:count] = found_at[:count]
            found_hi, found_lo, found_at = bigger_hi, bigger_lo, bigger_at
            for e in range(count):
                s = np.int64(_mix(found_hi[e], found_lo[e]) & np.uint64(capacity - 1))
                while table[s] != _EMPTY:
                    s = (s + 1) & (capacity - 1)
                table[s] = e
    rank_order = _rank_order(found_hi, found_lo, count)
    rank = np.empty(count, np.int32)
    for r in range(count):
        rank[rank_order[r]] = r
        first[lo_i + r] = found_at[rank_order[r]]
    for p in range(lo_i, hi_i):
        local[p] = rank[local[p]]
    return count


@nb.njit(parallel=True, **_OPTS)
def _nodes_per_window(order, starts, node_raw, local, first):
    n_windows = starts.shape[0] - 1
    nodes = np.zeros(n_windows, np.int64)
    for w in nb.prange(n_windows):
        if starts[w + 1] > starts[w]:
            nodes[w] = _assign_nodes(order, starts[w], starts[w + 1], node_raw, local, first)
    return nodes


@nb.njit(**_OPTS)
def _sort_in_place(values):
    """Insertion sort for the small arrays most groups have; numba's sort otherwise."""
    n = values.shape[0]
    if n > 24:
        values.sort()
        return
    for i in range(1, n):
        v = values[i]
        j = i - 1
        while j >= 0 and values[j] > v:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = v


@nb.njit(**_OPTS)
def _stats(rows, a, b, c, buffer):
    """(distinct, mode, mode count) of column ``c`` over ``rows[c, a:b]`` (nulls skipped)."""
    if b - a == 1:
        v = rows[c, a]
        return (0, NULL, 0) if v == NULL else (1, v, 1)
    k = 0
    for j in range(a, b):
        v = rows[c, j]
        if v != NULL:
            buffer[k] = v
            k += 1
    if k == 0:
        return 0, NULL, 0
    part = buffer[:k]
    _sort_in_place(part)
    distinct, best, best_count = 0, NULL, 0
    run_start = 0
    for j in range(1, k + 1):
        if j == k or part[j] != part[run_start]:
            distinct += 1
            run = j - run_start
            if run > best_count:  # strict: the first (smallest) value keeps a tie
                best, best_count = part[run_start], run
            run_start = j
    return distinct, best, best_count


@nb.njit(**_OPTS)
def _counted_stats(rows, a, b, c, counts, touched):
    """:func:`_stats` by counting into ``counts`` (one slot per possible value; left zeroed)."""
    k = 0
    for j in range(a, b):
        v = rows[c, j]
        if v != NULL:
            if counts[v] == 0:
                touched[k] = v
                k += 1
            counts[v] += 1
    best, best_count = NULL, 0
    for t in range(k):
        v = touched[t]
        count = counts[v]
        if count > best_count or (count == best_count and v < best):
            best, best_count = v, count
        counts[v] = 0
    return k, best, best_count


@nb.njit(**_OPTS)
def _wide_distinct(hi, lo, valid, a, b, buffer_lo, buffer_hi):
    """Distinct (hi, lo) pairs over rows ``a:b`` (invalid rows skipped)."""
    k = 0
    same_hi = True
    first_hi = np.uint64(0)
    for j in range(a, b):
        if valid[j]:
            if k == 0:
                first_hi = hi[j]
            elif hi[j] != first_hi:
                same_hi = False
            buffer_lo[k], buffer_hi[k] = lo[j], hi[j]
            k += 1
    if k <= 1:
        return k
    if k > _HASH_ABOVE:  # a hash set: linear in the group's size
        capacity = 64
        while capacity < 2 * k:
            capacity *= 2
        table = np.full(capacity, _EMPTY, np.int64)
        distinct = 0
        for t in range(k):
            h, low_half = buffer_hi[t], buffer_lo[t]
            slot = np.int64(_mix(h, low_half) & np.uint64(capacity - 1))
            while True:
                entry = table[slot]
                if entry == _EMPTY:
                    table[slot] = t
                    distinct += 1
                    break
                if buffer_hi[entry] == h and buffer_lo[entry] == low_half:
                    break
                slot = (slot + 1) & (capacity - 1)
        return distinct
    if same_hi:  # every IPv4 address, and IPv6 within one /64: the low halves decide
        part = buffer_lo[:k]
        _sort_in_place(part)
        distinct = 1
        for j in range(1, k):
            distinct += part[j] != part[j - 1]
        return distinct
    by_lo = np.argsort(buffer_lo[:k], kind="quicksort")
    distinct, run_start = 0, 0
    for j in range(1, k + 1):
        if j == k or buffer_lo[by_lo[j]] != buffer_lo[by_lo[run_start]]:
            if j - run_start == 1:
                distinct += 1
            else:  # same low half: count distinct high halves within the run
                highs = np.sort(buffer_hi[by_lo[run_start:j]])
                distinct += 1
                for q in range(1, highs.shape[0]):
                    distinct += highs[q] != highs[q - 1]
            run_start = j
    return distinct


@nb.njit(**_OPTS)
def _predicate(kind, value, pset, pclear, pvalues, f):
    """Feature ``f``'s predicate on ``value``; ``pvalues[f]`` its IsIn values."""
    if value == NULL:
        return False
    if kind == PRED_ISIN:
        for k in range(pvalues.shape[1]):
            v = pvalues[f, k]
            if v == NULL:
                return False
            if v == value:
                return True
        return False
    return (value & pset) == pset and (value & pclear) == 0


@nb.njit(parallel=True, **_OPTS)
def _evaluate(order, starts, local, nodes, row_offsets, values, bitmaps, has_nulls, wide_raw,
              wide_bitmaps, wide_has_nulls, opcode, slot, is_wide, out_index, pred_kind,
              pred_slot, pred_set, pred_clear, pred_values, stat_of_slot, numeric_of_slot,
              std_of_slot, n_stats, n_numeric, domain, domain_at, window_seconds, ints,
              int_valid, floats, float_valid, scratch_rows, scratch_hi, scratch_lo, scratch_ok,
              scratch_hits, scratch_buffers, scratch_counts):
    """Every feature of every (window, node). ``scratch_*`` hold one working set per
    thread (first axis: ``numba.get_thread_id()``), sized for the largest window: they
    are allocated, and their memory faulted in, once per call rather than per window."""
    n_windows = starts.shape[0] - 1
    n_features = opcode.shape[0]
    n_narrow = values.shape[0]
    n_wide = wide_raw.shape[0]
    big = np.iinfo(np.int64).max
    n_shares = 0
    for f in range(n_features):
        n_shares += opcode[f] == SHARE
    shares = np.empty(max(1, n_shares), np.int64)
    share_index = np.full(n_features, -1, np.int64)
    t = 0
    for f in range(n_features):
        if opcode[f] == SHARE:
            shares[t], share_index[f] = f, t
            t += 1
    for w in nb.prange(n_windows):
        lo_i, hi_i = starts[w], starts[w + 1]
        m = hi_i - lo_i
        if m == 0:
            continue
        k = nodes[w]
        # The window's packets in node order (counting sort), copied column by column:
        # each node's packets become one contiguous slice of every column.
        group_start = np.zeros(k + 1, np.int64)
        for p in range(lo_i, hi_i):
            group_start[local[p] + 1] += 1
        for r in range(k):
            group_start[r + 1] += group_start[r]
        fill = group_start[:-1].copy()
        thread = nb.get_thread_id()
        rows = scratch_rows[thread]
        w_hi, w_lo, w_ok = scratch_hi[thread], scratch_lo[thread], scratch_ok[thread]
        # Bit f of hits_of[j]: packet j satisfies share feature f's predicate.
        hits_of = scratch_hits[thread]
        for p in range(lo_i, hi_i):
            r = local[p]
            j = fill[r]
            fill[r] += 1
            i = order[p]
            for c in range(n_narrow):
                if has_nulls[c] and not (bitmaps[c, i >> 3] >> (i & 7)) & 1:
                    rows[c, j] = NULL
                else:
                    rows[c, j] = values[c, i]
            bits = np.uint64(0)
            for t in range(n_shares):
                f = shares[t]
                if _predicate(pred_kind[f], rows[pred_slot[f], j], pred_set[f],
                              pred_clear[f], pred_values, f):
                    bits |= np.uint64(1) << np.uint64(t)
            hits_of[j] = bits
            for c in range(n_wide):
                w_hi[c, j] = _byteswap(wide_raw[c, 2 * i])
                w_lo[c, j] = _byteswap(wide_raw[c, 2 * i + 1])
                w_ok[c, j] = not wide_has_nulls[c] or (wide_bitmaps[c, i >> 3] >> (i & 7)) & 1
        largest = 1
        for r in range(k):
            largest = max(largest, group_start[r + 1] - group_start[r])
        buffer = scratch_buffers[thread, 0]
        buffer_lo = scratch_buffers[thread, 1].view(np.uint64)
        buffer_hi = scratch_buffers[thread, 2].view(np.uint64)
        distinct = np.zeros(max(1, n_stats), np.int64)
        mode_value = np.zeros(max(1, n_stats), np.int64)
        mode_count = np.zeros(max(1, n_stats), np.int64)
        total = np.zeros(max(1, n_numeric), np.int64)
        present = np.zeros(max(1, n_numeric), np.int64)
        low = np.zeros(max(1, n_numeric), np.int64)
        high = np.zeros(max(1, n_numeric), np.int64)
        squares = np.zeros(max(1, n_numeric), np.float64)
        # Large groups count values instead of sorting them, where the column's values
        # are small enough to index an array (ports, TTLs, flags, lengths); the counts
        # are back to zero after each group.
        counts = scratch_counts[thread]
        hits = np.zeros(max(1, n_shares), np.int64)
        for r in range(k):
            a, b = group_start[r], group_start[r + 1]
            n = b - a
            row = row_offsets[w] + r
            if n_shares:
                hits[:] = 0
                for j in range(a, b):
                    bits = hits_of[j]
                    if bits:
                        for t in range(n_shares):
                            hits[t] += (bits >> np.uint64(t)) & np.uint64(1)
            for c in range(n_narrow):
                s = stat_of_slot[c]
                if s >= 0:
                    if n > 1 and domain[c] > 0:
                        distinct[s], mode_value[s], mode_count[s] = _counted_stats(
                            rows, a, b, c, counts[domain_at[c]:domain_at[c] + domain[c]],
                            buffer)
                    else:
                        distinct[s], mode_value[s], mode_count[s] = _stats(rows, a, b, c,
                                                                           buffer)
                q = numeric_of_slot[c]
                if q >= 0:
                    t, cnt, lo_v, hi_v = 0, 0, big, -big
                    for j in range(a, b):
                        v = rows[c, j]
                        if v != NULL:
                            t += v
                            cnt += 1
                            lo_v = min(lo_v, v)
                            hi_v = max(hi_v, v)
                    total[q], present[q], low[q], high[q] = t, cnt, lo_v, hi_v
                    if std_of_slot[c] and cnt >= 2:  # two passes: no cancellation
                        mean = t / cnt
                        acc = 0.0
                        for j in range(a, b):
                            v = rows[c, j]
                            if v != NULL:
                                d = v - mean
                                acc += d * d
                        squares[q] = acc
            for f in range(n_features):
                op, c, out = opcode[f], slot[f], out_index[f]
                if op == COUNT:
                    ints[out, row] = n
                elif op == RATE:
                    floats[out, row] = n / window_seconds
                elif op == SHARE:
                    floats[out, row] = hits[share_index[f]] / n
                elif op == NUNIQUE and is_wide[f]:
                    ints[out, row] = _wide_distinct(w_hi[c], w_lo[c], w_ok[c], a, b,
                                                    buffer_lo, buffer_hi)
                elif op == NUNIQUE:
                    ints[out, row] = distinct[stat_of_slot[c]]
                elif op == MODE or op == MODE_SHARE:
                    s = stat_of_slot[c]
                    if mode_count[s] == 0:
                        if op == MODE:
                            int_valid[out, row] = False
                        else:
                            float_valid[out, row] = False
                    elif op == MODE:
                        ints[out, row] = mode_value[s]
                    else:
                        floats[out, row] = mode_count[s] / n
                else:  # SUM, MEAN, STD, MIN, MAX over non-null values
                    q = numeric_of_slot[c]
                    if op == SUM:
                        ints[out, row] = total[q]
                    elif present[q] == 0 or (op == STD and present[q] < 2):
                        if op == MIN or op == MAX:
                            int_valid[out, row] = False
                        else:
                            float_valid[out, row] = False
                    elif op == MIN:
                        ints[out, row] = low[q]
                    elif op == MAX:
                        ints[out, row] = high[q]
                    elif op == MEAN:
                        floats[out, row] = total[q] / present[q]
                    else:
                        floats[out, row] = np.sqrt(squares[q] / (present[q] - 1))


@nb.njit(**_OPTS)
def _byteswap(x):
    x = ((x & np.uint64(0x00FF00FF00FF00FF)) << np.uint64(8)) | \
        ((x >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF))
    x = ((x & np.uint64(0x0000FFFF0000FFFF)) << np.uint64(16)) | \
        ((x >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF))
    return (x << np.uint64(32)) | (x >> np.uint64(32))


@nb.njit(parallel=True, **_OPTS)
def _split_halves(raw, hi, lo):
    """Big-endian 16-byte values (as native uint64 pairs) -> native hi and lo halves."""
    for i in nb.prange(hi.shape[0]):
        hi[i] = _byteswap(raw[2 * i])
        lo[i] = _byteswap(raw[2 * i + 1])


# -- Arrow in, Arrow out -------------------------------------------------------------------

def _array(column) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def _chunks(column) -> list[pa.Array]:
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]


def _int64(column) -> np.ndarray:
    """An int64 column as one numpy array (a view when it is one chunk)."""
    parts = [_primitive(a) for a in _chunks(column)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _column_words(column) -> np.ndarray:
    """:func:`_words` of a chunked address column, as one array."""
    parts = [_words(a) for a in _chunks(column)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _bitmap_bytes(array: pa.Array, n_bytes: int) -> np.ndarray | None:
    """The validity bitmap with bit ``i`` for row ``i`` (None: no nulls)."""
    if array.null_count == 0 or array.buffers()[0] is None:
        return None
    if array.offset % 8 == 0:
        raw = np.frombuffer(array.buffers()[0], np.uint8)[array.offset // 8:]
        out = np.zeros(n_bytes, np.uint8)
        out[:min(n_bytes, raw.size)] = raw[:n_bytes]
        return out
    bits = array.is_valid().to_numpy(zero_copy_only=False)
    out = np.zeros(n_bytes, np.uint8)
    packed = np.packbits(bits, bitorder="little")
    out[:packed.size] = packed
    return out


def _valid(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.ones(len(array), np.bool_)
    return np.asarray(array.is_valid().to_numpy(zero_copy_only=False), np.bool_)


def _primitive(array: pa.Array) -> np.ndarray:
    """The values buffer of a primitive array as numpy (values under nulls: arbitrary)."""
    dtype = np.dtype(array.type.to_pandas_dtype())
    return np.frombuffer(array.buffers()[1], dtype, count=array.offset + len(array))[
        array.offset:]


def _words(array: pa.Array) -> np.ndarray:
    """A 16-byte address column as 2 big-endian uint64 words a row, without copying where
    the values are one aligned block (values under nulls: arbitrary)."""
    if pa.types.is_fixed_size_binary(array.type):
        data = np.frombuffer(array.buffers()[1], np.uint8)[16 * array.offset:
                                                          16 * (array.offset + len(array))]
    else:  # variable binary (Polars, Spark): one block when every value has 16 bytes
        offsets = np.frombuffer(array.buffers()[1], np.int64 if pa.types.is_large_binary(
            array.type) else np.int32, count=array.offset + len(array) + 1)[array.offset:]
        if array.null_count or not (np.diff(offsets) == 16).all():
            return _words(array.cast(pa.binary(16)))
        data = np.frombuffer(array.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
    if data.ctypes.data % 8:
        data = data.copy()
    return data.view(np.uint64)


def _halves(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A 16-byte address column as (hi, lo) uint64 halves (values under nulls: arbitrary)."""
    raw = _words(array)
    hi, lo = np.empty(len(array), np.uint64), np.empty(len(array), np.uint64)
    if np.little_endian:
        _split_halves(raw, hi, lo)
    else:
        hi[:], lo[:] = raw[0::2], raw[1::2]
    return hi, lo


def evaluate(packets: pa.Table, spec: fs.FeatureSpec) -> pa.Table:
    """The feature table (sorted by window, node) of packets whose ``ts`` and node are set.

    ``packets`` holds at least ``spec.input_columns()``; address columns may be
    fixed-size or variable binary of 16 bytes.
    """
    import pyarrow.compute as pc

    if not np.little_endian:
        raise NotImplementedError("the feature kernel reads addresses as little-endian words")
    program = compile_spec(spec)
    n = packets.num_rows
    if n == 0:
        return spec.schema().empty_table()
    ts = _int64(packets.column("ts"))
    width = spec.window_ns
    first_window = int(ts.min()) // width
    n_windows = int(ts.max()) // width - first_window + 1
    window = np.empty(n, np.int64)
    _window_ids(ts, width, first_window, window)
    if n_windows > 2 * n + 1024:  # sparse in time: number only the windows that occur
        occupied, window = np.unique(window, return_inverse=True)
        window_index = occupied + first_window
        n_windows = len(occupied)
    else:
        window_index = np.arange(n_windows, dtype=np.int64) + first_window
    node_raw = _column_words(packets.column(spec.node))

    n_bytes = (n + 7) // 8
    n_narrow = max(1, len(program.narrow))
    values = np.zeros((n_narrow, n), np.uint32)
    bitmaps = np.zeros((n_narrow, n_bytes if program.narrow else 1), np.uint8)
    has_nulls = np.zeros(n_narrow, np.bool_)
    domain = np.zeros(n_narrow, np.int64)
    for c, name in enumerate(program.narrow):
        column = packets.column(name)
        start = 0
        for array in _chunks(column):  # each chunk straight into its slice: no concatenation
            values[c, start:start + len(array)] = _primitive(array)
            start += len(array)
        if column.null_count:
            bitmaps[c], has_nulls[c] = _bitmap_bytes(_array(column), n_bytes), True
        if program.stat_of_slot[c] >= 0:
            top = pc.max(column).as_py()
            domain[c] = 0 if top is None or top >= _MAX_DOMAIN else top + 1
    n_wide = max(1, len(program.wide))
    wide_raw = np.zeros((n_wide, 2 * n), np.uint64) if len(program.wide) != 1 else None
    wide_bitmaps = np.zeros((n_wide, n_bytes), np.uint8)
    wide_has_nulls = np.zeros(n_wide, np.bool_)
    for c, name in enumerate(program.wide):
        column = packets.column(name)
        words = _column_words(column)
        if wide_raw is None:
            wide_raw = words.reshape(1, -1)  # the usual single address column: no copy
        else:
            wide_raw[c] = words
        if column.null_count:
            wide_bitmaps[c], wide_has_nulls[c] = _bitmap_bytes(_array(column), n_bytes), True

    order, starts = _window_order(window, n_windows)
    del window
    local = np.empty(n, np.int32)
    first = np.empty(n, np.int64)
    nodes = _nodes_per_window(order, starts, node_raw, local, first)
    row_offsets = np.zeros(n_windows + 1, np.int64)
    np.cumsum(nodes, out=row_offsets[1:])
    rows = int(row_offsets[-1])
    # One row per output column: each feature comes out contiguous.
    ints = np.zeros((max(1, program.n_int), rows), np.int64)
    floats = np.zeros((max(1, program.n_float), rows), np.float64)
    int_valid = np.ones(ints.shape, np.bool_)
    float_valid = np.ones(floats.shape, np.bool_)
    threads = nb.get_num_threads()
    largest = int(np.diff(starts).max())
    scratch = (np.empty((threads, n_narrow, largest), np.int64),
               np.empty((threads, n_wide, largest), np.uint64),
               np.empty((threads, n_wide, largest), np.uint64),
               np.empty((threads, n_wide, largest), np.bool_),
               np.empty((threads, largest), np.uint64),
               np.empty((threads, 3, largest), np.int64),
               np.zeros((threads, max(1, int(domain.sum()))), np.int32))
    _evaluate(order, starts, local, nodes, row_offsets, values, bitmaps, has_nulls, wide_raw,
              wide_bitmaps, wide_has_nulls,
              program.opcode, program.slot, program.is_wide, program.out_index,
              program.pred_kind, program.pred_slot, program.pred_set, program.pred_clear,
              program.pred_values, program.stat_of_slot, program.numeric_of_slot,
              program.std_of_slot, program.n_stats, program.n_numeric, domain,
              np.concatenate([[0], np.cumsum(domain)[:-1]]).astype(np.int64),
              spec.window_seconds, ints, int_valid, floats, float_valid, *scratch)

    # Row r of window w is the node of packet first[starts[w] + r].
    take = first[np.repeat(starts[:-1] - row_offsets[:-1], nodes) + np.arange(rows)]
    pairs = node_raw.reshape(-1, 2)[take]
    node = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), rows,
                                                [None, pa.py_buffer(pairs)])
    window_start = np.repeat(window_index, nodes) * width
    columns = [node, pa.array(window_start, pa.int64())]
    for i in range(len(spec.features)):
        j = program.out_index[i]
        if program.is_float[i]:
            out, valid, dtype = floats[j], float_valid[j], pa.float64()
        else:
            out, valid, dtype = ints[j], int_valid[j], pa.int64()
        columns.append(pa.array(out, dtype, mask=None if valid.all() else ~valid))
    return pa.Table.from_arrays(columns, schema=spec.schema())
