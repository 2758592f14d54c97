"""The feature spec compiled into numba kernels: the CPU path of the embedded engine.

The Polars query (:mod:`netsift.features.polars_engine`) groups every packet by (node,
window) several times over, with hash tables as large as the number of node-windows.
The kernel instead uses what a capture already is: packets of one window are a
contiguous time range. It splits the packets into windows (a counting sort on the
window index, skipped when they are in time order), then sorts each window's packets by
node: IPv4 nodes by a radix sort of their 32-bit address, other addresses through a
hash table of the window's nodes. A node's packets are then one run of that order
(a row of the result), and every aggregate is a pass over runs, in parallel blocks of
rows, one input column at a time: a run's values are copied into a per-thread buffer
(the only random reads), and modes, distinct counts, sums and predicate counts come
from that buffer, by counting in a slot per value for small-valued columns (ports,
TTLs, flags, lengths) and by sorting wider values; distinct addresses
are counted on 32-bit keys when a slice's column is all IPv4. No hash table ever spans
the dataset, working arrays are kept per thread between calls, and results are written
into memory from Arrow's pool (reused between slices, unlike fresh numpy pages).

The spec drives it as data: each feature becomes an opcode, a column slot and a
predicate (:func:`compile_spec`); adding a feature to the spec needs no kernel change.
Results equal the Polars query's and Spark's (the parity suite runs it as an engine).
"""

from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass
from functools import lru_cache

import numba as nb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from netsift import arrays
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

    Narrow columns (unsigned, at most 32 bits) are read at their width, their nulls
    skipped as a group's values are loaded; wide columns (addresses) only feed
    ``n_unique``, on 32-bit keys when all IPv4, else as (hi, lo) uint64 pairs. Per narrow
    column the kernel computes, once per group, what the features need:
    ``stat_of_slot`` (distinct count and mode) and ``numeric_of_slot`` (sum, count, min,
    max, and the squared deviations if ``std_of_slot``).
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
_V4_PREFIX = np.uint64(0xFFFF0000)  # bytes 8-11 of an IPv4-mapped address, as read


@nb.njit(**_OPTS)
def _is_v4(high_word, low_word):
    """Whether an address, as its two raw (little-endian read) words, is IPv4-mapped."""
    return high_word == 0 and (low_word & np.uint64(0xFFFFFFFF)) == _V4_PREFIX


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
def _window_order(window, n_windows, order):
    """Packet indices grouped by dense window id (stable) into ``order``; returns each
    window's start offset. Packets in time order need no sort."""
    n = window.shape[0]
    starts = np.zeros(n_windows + 1, np.int64)
    ordered = True
    for i in range(n):
        starts[window[i] + 1] += 1
        ordered &= i == 0 or window[i] >= window[i - 1]
    for w in range(n_windows):
        starts[w + 1] += starts[w]
    if ordered:
        for i in range(n):
            order[i] = i
        return starts
    fill = starts[:-1].copy()
    for i in range(n):
        w = window[i]
        order[fill[w]] = i
        fill[w] += 1
    return starts


@nb.njit(parallel=True, **_OPTS)
def _window_ids(ts, width, first_window, out):
    for i in nb.prange(ts.shape[0]):
        out[i] = ts[i] // width - first_window


@nb.njit(**_OPTS)
def _radix_sort32(keys, items, key_tmp, item_tmp):
    """Sort ``items`` by the 32-bit ``keys`` in place (stable; both arrays permuted), by
    two 16-bit counting passes through ``key_tmp`` / ``item_tmp`` (as long). A pass whose
    digit is the same for every key (nodes within one /16) is skipped."""
    n = keys.shape[0]
    counts = np.empty(65537, np.int64)
    in_tmp = False
    for shift in (0, 16):
        source_k, source_v = (key_tmp, item_tmp) if in_tmp else (keys, items)
        target_k, target_v = (keys, items) if in_tmp else (key_tmp, item_tmp)
        counts[:] = 0
        for i in range(n):
            counts[((source_k[i] >> shift) & 0xFFFF) + 1] += 1
        if counts[((source_k[0] >> shift) & 0xFFFF) + 1] == n:
            continue
        for d in range(65536):
            counts[d + 1] += counts[d]
        for i in range(n):
            d = (source_k[i] >> shift) & 0xFFFF
            target_k[counts[d]] = source_k[i]
            target_v[counts[d]] = source_v[i]
            counts[d] += 1
        in_tmp = not in_tmp
    if in_tmp:
        keys[:] = key_tmp
        items[:] = item_tmp


@nb.njit(**_OPTS)
def _rank_order(found_hi, found_lo, count):
    """Indices of distinct nodes in (hi, lo) order: the order their bytes compare in."""
    by_lo = np.argsort(found_lo[:count])  # keys are distinct: any sort is stable enough
    return by_lo[np.argsort(found_hi[:count][by_lo], kind="mergesort")]


@nb.njit(**_OPTS)
def _node_ranks(order, lo_i, hi_i, node_raw):
    """Per packet ``order[lo_i:hi_i]``, its node's rank in address order (any addresses:
    an open addressing hash table gives dense ids, sorted afterwards); and the count."""
    m = hi_i - lo_i
    capacity = 64
    while capacity < 2 * min(m, 4096):
        capacity *= 2
    table = np.full(capacity, _EMPTY, np.int64)
    found_hi = np.empty(capacity // 2 + 1, np.uint64)
    found_lo = np.empty(capacity // 2 + 1, np.uint64)
    local = np.empty(m, np.int64)
    count = 0
    for p in range(lo_i, hi_i):
        i = order[p]
        h, low_half = _byteswap(node_raw[2 * i]), _byteswap(node_raw[2 * i + 1])
        slot = np.int64(_mix(h, low_half) & np.uint64(capacity - 1))
        while True:
            entry = table[slot]
            if entry == _EMPTY:
                table[slot] = count
                found_hi[count], found_lo[count] = h, low_half
                local[p - lo_i] = count
                count += 1
                break
            if found_hi[entry] == h and found_lo[entry] == low_half:
                local[p - lo_i] = entry
                break
            slot = (slot + 1) & (capacity - 1)
        if 2 * count >= capacity:  # grow: rehash the ids found so far
            capacity *= 2
            table = np.full(capacity, _EMPTY, np.int64)
            bigger_hi = np.empty(capacity // 2 + 1, np.uint64)
            bigger_lo = np.empty(capacity // 2 + 1, np.uint64)
            bigger_hi[:count] = found_hi[:count]
            bigger_lo[:count] = found_lo[:count]
            found_hi, found_lo = bigger_hi, bigger_lo
            for e in range(count):
                s = np.int64(_mix(found_hi[e], found_lo[e]) & np.uint64(capacity - 1))
                while table[s] != _EMPTY:
                    s = (s + 1) & (capacity - 1)
                table[s] = e
    rank_order = _rank_order(found_hi, found_lo, count)
    rank = np.empty(count, np.int64)
    for r in range(count):
        rank[rank_order[r]] = r
    for j in range(m):
        local[j] = rank[local[j]]
    return local, count


_RADIX_FROM = 2048  # window size from which a radix sort beats numba's mergesort


@nb.njit(parallel=True, **_OPTS)
def _group(order, starts, node_raw, perm, group_at, nodes, key_scratch, item_scratch):
    """Sort each window's packets by node: ``perm[starts[w]:starts[w + 1]]`` are window
    ``w``'s packet indices in node address order, ``group_at[starts[w] + r]`` the position
    in ``perm`` where its node ``r`` starts, ``nodes[w]`` its node count.

    IPv4 nodes (the usual case) are sorted by their 32-bit address directly; windows with
    any other address rank nodes through a hash table and sort by rank (counting sort).
    """
    for w in nb.prange(starts.shape[0] - 1):
        lo_i, hi_i = starts[w], starts[w + 1]
        m = hi_i - lo_i
        if m == 0:
            continue
        thread = nb.get_thread_id()
        keys = key_scratch[thread, 0, :m]
        v4 = True
        for p in range(lo_i, hi_i):
            i = order[p]
            if not _is_v4(node_raw[2 * i], node_raw[2 * i + 1]):
                v4 = False
                break
            keys[p - lo_i] = _byteswap(node_raw[2 * i + 1]) & np.uint64(0xFFFFFFFF)
        k = 0
        if v4:
            items = perm[lo_i:hi_i]
            items[:] = order[lo_i:hi_i]
            if m >= _RADIX_FROM:
                _radix_sort32(keys, items, key_scratch[thread, 1, :m], item_scratch[thread, :m])
            else:
                by_key = np.argsort(keys, kind="mergesort")
                items[:] = items[by_key]
                keys[:] = keys[by_key]
            for j in range(m):
                if j == 0 or keys[j] != keys[j - 1]:
                    group_at[lo_i + k] = lo_i + j
                    k += 1
        else:
            local, k = _node_ranks(order, lo_i, hi_i, node_raw)
            fill = np.zeros(k + 1, np.int64)
            for j in range(m):
                fill[local[j] + 1] += 1
            for r in range(k):
                fill[r + 1] += fill[r]
                group_at[lo_i + r] = lo_i + fill[r]
            for j in range(m):
                r = local[j]
                perm[lo_i + fill[r]] = order[lo_i + j]
                fill[r] += 1
        nodes[w] = k


@nb.njit(parallel=True, **_OPTS)
def _gather_wide(perm, words, valid, has_nulls, hi, lo, ok):
    """Address ``perm[j]`` as native (hi, lo) halves, and whether it is set."""
    for j in nb.prange(perm.shape[0]):
        i = perm[j]
        hi[j] = _byteswap(words[2 * i])
        lo[j] = _byteswap(words[2 * i + 1])
        ok[j] = not has_nulls or valid[i]


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
def _sorted_stats(part):
    """(distinct, mode, mode count) of the values ``part`` (sorted in place)."""
    _sort_in_place(part)
    distinct, best, best_count = 0, NULL, 0
    run_start = 0
    k = part.shape[0]
    for j in range(1, k + 1):
        if j == k or part[j] != part[run_start]:
            distinct += 1
            run = j - run_start
            if run > best_count:  # strict: the first (smallest) value keeps a tie
                best, best_count = part[run_start], run
            run_start = j
    return distinct, best, best_count


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


# Inlined into its callers' loops (as a call it made them about a fifth slower).
@nb.njit(inline="always", **_OPTS)
def _load_run(perm, values, valid, has_nulls, a, b, buffer):
    """The set ``values[perm[j]]`` for ``j`` in ``a:b`` into ``buffer``; returns how many.
    Branch-free: a null's value is overwritten by the next one."""
    if has_nulls:
        k = 0
        for j in range(a, b):
            i = perm[j]
            buffer[k] = values[i]
            k += valid[i]
        return k
    for j in range(a, b):
        buffer[j - a] = values[perm[j]]
    return b - a


_BLOCK = 2048  # rows a thread takes at a time
# Group size above which values are counted in a slot per value rather than sorted:
# counting wins from two values on, 16-bit domains included (measured; a group of one
# value needs neither).
_COUNT_ABOVE = 1


@nb.njit(parallel=True, **_OPTS)
def _narrow_aggregates(row_start, perm, values, valid, has_nulls, stat, numeric, with_std,
                       domain, shares, share_rows, pred_kind, pred_set, pred_clear,
                       pred_values, distinct, mode_value, mode_count, total, present, low,
                       high, squares, hits, buffers, counts):
    """Per row, over the non-null ``values[perm[j]]`` for ``j`` in ``row_start[row]:
    row_start[row + 1]``: the column's stats (row ``stat`` of distinct/mode_value/
    mode_count, if >= 0), its numeric aggregates (row ``numeric`` of total/present/low/
    high/squares, if >= 0) and, per share feature ``shares[t]`` predicated on it, the
    packets that satisfy it (``hits[share_rows[t]]``). ``valid``: a byte per packet, if
    ``has_nulls``.

    A group's values are copied to a per-thread buffer first, so every pass after the
    one random read per packet is over a few cached values. ``domain`` > 0: values are
    below it, and counted in a slot per value (``counts``, per thread, left zeroed);
    predicates are then tested once per distinct value. Otherwise values are sorted.
    """
    rows = row_start.shape[0] - 1
    n_shares = shares.shape[0]
    for block in nb.prange((rows + _BLOCK - 1) // _BLOCK):
        thread = nb.get_thread_id()
        buffer, touched = buffers[thread, 0], buffers[thread, 1]
        count_of = counts[thread, :max(domain, 1)]
        for row in range(block * _BLOCK, min(rows, (block + 1) * _BLOCK)):
            k = _load_run(perm, values, valid, has_nulls, row_start[row],
                          row_start[row + 1], buffer)
            part = buffer[:k]
            if numeric >= 0:
                t, lo_v, hi_v = 0, NULL, NULL
                if k:
                    lo_v = hi_v = part[0]
                for v in part:
                    t += v
                    lo_v = min(lo_v, v)
                    hi_v = max(hi_v, v)
                total[numeric, row], present[numeric, row] = t, k
                low[numeric, row], high[numeric, row] = lo_v, hi_v
                if with_std and k >= 2:  # two passes: no cancellation
                    mean = t / k
                    acc = 0.0
                    for v in part:
                        deviation = v - mean
                        acc += deviation * deviation
                    squares[numeric, row] = acc
            if stat >= 0 and domain > 0 and k > _COUNT_ABOVE:
                d = 0
                for v in part:
                    if count_of[v] == 0:
                        touched[d] = v
                        d += 1
                    count_of[v] += 1
                mv, mc = NULL, 0
                for x in range(d):
                    v = touched[x]
                    count = count_of[v]
                    if count > mc or (count == mc and v < mv):  # ties: the smallest value
                        mv, mc = v, count
                    for t in range(n_shares):
                        f = shares[t]
                        if _predicate(pred_kind[f], v, pred_set[f], pred_clear[f],
                                      pred_values, f):
                            hits[share_rows[t], row] += count
                    count_of[v] = 0
                distinct[stat, row], mode_value[stat, row], mode_count[stat, row] = d, mv, mc
                continue
            for t in range(n_shares):
                f = shares[t]
                h = 0
                for v in part:
                    h += _predicate(pred_kind[f], v, pred_set[f], pred_clear[f],
                                    pred_values, f)
                hits[share_rows[t], row] = h
            if stat >= 0:
                if k == 0:
                    d, mv, mc = 0, NULL, 0
                elif k == 1:
                    d, mv, mc = 1, part[0], 1
                else:
                    d, mv, mc = _sorted_stats(part)
                distinct[stat, row], mode_value[stat, row], mode_count[stat, row] = d, mv, mc


@nb.njit(**_OPTS)
def _wide_distinct(hi, lo, valid, a, b, buffer_lo, buffer_hi, table):
    """Distinct (hi, lo) pairs over rows ``a:b`` (invalid rows skipped); ``table`` is
    scratch of at least twice the group's size (left all empty)."""
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
        table[:capacity] = _EMPTY
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


@nb.njit(parallel=True, **_OPTS)
def _v4_keys(words, valid, has_nulls, keys):
    """Each address (``words``: 2 raw words a row) as a 32-bit key: its IPv4 address
    (byte order kept) if IPv4-mapped. Returns how many set rows are not IPv4-mapped
    (their keys are meaningless)."""
    other = 0
    for i in nb.prange(keys.shape[0]):
        keys[i] = np.uint32(words[2 * i + 1] >> np.uint64(32))
        if not _is_v4(words[2 * i], words[2 * i + 1]) and (not has_nulls or valid[i] != 0):
            other += 1
    return other


@nb.njit(parallel=True, **_OPTS)
def _distinct_v4(row_start, perm, keys, valid, has_nulls, out, buffers, tables):
    """Per row, the distinct set 32-bit ``keys[perm[j]]`` of its group (``out[row]``):
    sorted in place for small groups, a hash set (``tables``, per thread, left empty)
    above ``_HASH_ABOVE``."""
    rows = row_start.shape[0] - 1
    for block in nb.prange((rows + _BLOCK - 1) // _BLOCK):
        thread = nb.get_thread_id()
        buffer, table = buffers[thread], tables[thread]
        for row in range(block * _BLOCK, min(rows, (block + 1) * _BLOCK)):
            k = _load_run(perm, keys, valid, has_nulls, row_start[row], row_start[row + 1],
                          buffer)
            if k <= _HASH_ABOVE:
                part = buffer[:k]
                _sort_in_place(part)
                distinct = 1 if k else 0
                for j in range(1, k):
                    distinct += part[j] != part[j - 1]
                out[row] = distinct
                continue
            bits = 6
            while (1 << bits) < 2 * k:
                bits += 1
            mask = (1 << bits) - 1
            distinct = 0
            for t in range(k):
                key = np.int64(buffer[t])
                # Fibonacci hashing: the product's top bits mix every bit of the key
                slot = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15))
                                >> np.uint64(64 - bits))
                while True:
                    entry = table[slot]
                    if entry == _EMPTY:
                        table[slot] = key
                        distinct += 1
                        break
                    if entry == key:
                        break
                    slot = (slot + 1) & mask
            table[:mask + 1] = _EMPTY
            out[row] = distinct


@nb.njit(parallel=True, **_OPTS)
def _wide_aggregates(row_start, hi, lo, ok, out, buffers_lo, buffers_hi, tables):
    """Per row, the distinct addresses of its group (``out[row]``)."""
    rows = row_start.shape[0] - 1
    for block in nb.prange((rows + _BLOCK - 1) // _BLOCK):
        thread = nb.get_thread_id()
        for row in range(block * _BLOCK, min(rows, (block + 1) * _BLOCK)):
            out[row] = _wide_distinct(hi, lo, ok, row_start[row], row_start[row + 1],
                                      buffers_lo[thread], buffers_hi[thread], tables[thread])


@nb.njit(parallel=True, **_OPTS)
def _features(row_start, opcode, slot, is_wide, out_index, stat_of_slot, numeric_of_slot,
              share_index, window_seconds, distinct, mode_value, mode_count, total, present,
              low, high, squares, hits, wide_count, ints, int_valid, floats, float_valid):
    """Every feature of every row from the per-row aggregates."""
    rows = row_start.shape[0] - 1
    for block in nb.prange((rows + _BLOCK - 1) // _BLOCK):
        first, last = block * _BLOCK, min(rows, (block + 1) * _BLOCK)
        for f in range(opcode.shape[0]):
            op, c, out = opcode[f], slot[f], out_index[f]
            if op == COUNT:
                for row in range(first, last):
                    ints[out, row] = row_start[row + 1] - row_start[row]
            elif op == RATE:
                for row in range(first, last):
                    floats[out, row] = (row_start[row + 1] - row_start[row]) / window_seconds
            elif op == SHARE:
                t = share_index[f]
                for row in range(first, last):
                    floats[out, row] = hits[t, row] / (row_start[row + 1] - row_start[row])
            elif op == NUNIQUE and is_wide[f]:
                for row in range(first, last):
                    ints[out, row] = wide_count[c, row]
            elif op == NUNIQUE:
                s = stat_of_slot[c]
                for row in range(first, last):
                    ints[out, row] = distinct[s, row]
            elif op == MODE:
                s = stat_of_slot[c]
                for row in range(first, last):
                    ints[out, row] = mode_value[s, row]
                    int_valid[out, row] = mode_count[s, row] > 0
            elif op == MODE_SHARE:
                s = stat_of_slot[c]
                for row in range(first, last):
                    floats[out, row] = mode_count[s, row] / (row_start[row + 1] - row_start[row])
                    float_valid[out, row] = mode_count[s, row] > 0
            elif op == SUM:
                q = numeric_of_slot[c]
                for row in range(first, last):
                    ints[out, row] = total[q, row]
            elif op == MIN or op == MAX:
                q = numeric_of_slot[c]
                extreme = low if op == MIN else high
                for row in range(first, last):
                    ints[out, row] = extreme[q, row]
                    int_valid[out, row] = present[q, row] > 0
            elif op == MEAN:
                q = numeric_of_slot[c]
                for row in range(first, last):
                    valid = present[q, row] > 0
                    floats[out, row] = total[q, row] / present[q, row] if valid else 0.0
                    float_valid[out, row] = valid
            else:  # STD: sample standard deviation, from two values on
                q = numeric_of_slot[c]
                for row in range(first, last):
                    valid = present[q, row] >= 2
                    floats[out, row] = np.sqrt(squares[q, row] / (present[q, row] - 1)) \
                        if valid else 0.0
                    float_valid[out, row] = valid


@nb.njit(parallel=True, **_OPTS)
def _keys(node_raw, perm, row_start, row_offsets, window_starts, node_words, window_start):
    """Each row's node (the raw words of its first packet's) and window start; window
    ``w`` holds rows ``row_offsets[w]:row_offsets[w + 1]``."""
    for w in nb.prange(row_offsets.shape[0] - 1):
        for row in range(row_offsets[w], row_offsets[w + 1]):
            i = perm[row_start[row]]
            node_words[row, 0], node_words[row, 1] = node_raw[2 * i], node_raw[2 * i + 1]
            window_start[row] = window_starts[w]


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


@nb.njit(parallel=True, **_OPTS)
def _views_in_place(views, size):
    """Whether every view (4 words: length, prefix, buffer, offset) is a ``size``-byte
    value in buffer 0, ``size`` bytes after the previous one's."""
    base = np.int64(views[0, 3])
    misplaced = 0
    for i in nb.prange(views.shape[0]):
        if views[i, 0] != size or views[i, 2] != 0 or np.int64(views[i, 3]) != base + size * i:
            misplaced += 1
    return misplaced == 0


@nb.njit(parallel=True, **_OPTS)
def _gather_views(views, data, starts, out):
    """Each 16-byte view's value into ``out`` (16 bytes a row; zeros for any other
    length: nulls); ``data`` holds the data buffers end to end, buffer ``b`` from
    ``starts[b]``."""
    for i in nb.prange(views.shape[0]):
        if views[i, 0] == 16:
            at = starts[views[i, 2]] + views[i, 3]
            for b in range(16):
                out[16 * i + b] = data[at + b]
        else:
            for b in range(16):
                out[16 * i + b] = 0


# -- Arrow in, Arrow out -------------------------------------------------------------------

def _array(column) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def _chunks(column) -> list[pa.Array]:
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]


def _values(column, name: str, dtype=None) -> np.ndarray:
    """A primitive column's values as one array (under nulls: arbitrary): a view of a
    single chunk of ``dtype`` (default: the column's), else copied into working memory
    ``name``."""
    chunks = _chunks(column)
    dtype = np.dtype(dtype or column.type.to_pandas_dtype())
    if len(chunks) == 1 and (view := arrays.values(chunks[0])).dtype == dtype:
        return _read_only(view)
    out = _workspace.array(name, len(column), dtype)
    start = 0
    for array in chunks:
        out[start:start + len(array)] = arrays.values(array)
        start += len(array)
    return _read_only(out)


def _address_words(column, name: str) -> np.ndarray:
    """:func:`_words` of an address column, as one array (chunks copied into ``name``)."""
    chunks = _chunks(column)
    if len(chunks) == 1:
        return _words(chunks[0])
    out = _workspace.array(name, 2 * len(column), np.uint64)
    start = 0
    for array in chunks:
        out[start:start + 2 * len(array)] = _words(array)
        start += 2 * len(array)
    return _read_only(out)


def _validity(column, name: str) -> np.ndarray | None:
    """A byte per row, 1 where the value is set, in working memory ``name`` (None: no
    nulls)."""
    if column.null_count == 0:
        return None
    out = _workspace.array(name, len(column), np.uint8)
    start = 0
    for array in _chunks(column):
        n, first = len(array), array.offset
        if array.null_count == 0:
            out[start:start + n] = 1
        else:
            bits = np.frombuffer(array.buffers()[0], np.uint8)[first // 8:(first + n + 7) // 8]
            out[start:start + n] = np.unpackbits(bits, bitorder="little")[
                first % 8:first % 8 + n]
        start += n
    return out


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
    return _read_only(data.view(np.uint64))


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array``. Inputs the kernels take are read-only, whether
    views of Arrow's memory or copies: numba compiles, and each process loads from its
    cache, one variant per writability (eight more kernels: 50-90 ms a process)."""
    view = array.view()
    view.flags.writeable = False
    return view


def _halves(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A 16-byte address column as (hi, lo) uint64 halves (values under nulls: arbitrary)."""
    raw = _words(array)
    hi, lo = np.empty(len(array), np.uint64), np.empty(len(array), np.uint64)
    if np.little_endian:
        _split_halves(raw, hi, lo)
    else:
        hi[:], lo[:] = raw[0::2], raw[1::2]
    return hi, lo


_KEEP_BYTES = 64 << 20  # largest working array kept: a slice's (polars_engine.SLICE_ROWS)


class _Workspace(threading.local):
    """Working arrays kept between calls (one set per calling thread): each slice of a
    dataset reuses the last one's memory instead of mapping and zeroing fresh pages,
    which costs this kernel as much as some of its passes."""

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape, dtype, fill=None) -> np.ndarray:
        """An array for ``name`` (uninitialised unless ``fill``), valid until the next
        request for ``name`` on this thread."""
        dtype = np.dtype(dtype)
        shape = shape if isinstance(shape, tuple) else (shape,)
        size = max(1, int(np.prod(shape))) * dtype.itemsize
        buffer = self.buffers.get(name)
        if size > _KEEP_BYTES:  # a table far above a slice: not kept
            buffer = np.empty(size, np.uint8)
        elif buffer is None or buffer.size < size:
            # Plain anonymous memory, not numpy's: numpy asks for transparent huge pages,
            # and where the kernel compacts memory to find them (THP "defrag" madvise,
            # a full page cache) a process's first slice took 0.5 s longer.
            keep = min(_KEEP_BYTES, size + size // 4)
            buffer = self.buffers[name] = np.frombuffer(mmap.mmap(-1, keep), np.uint8)
        out = buffer[:size].view(dtype).reshape(shape)
        if fill is not None:
            out.fill(fill)
        return out


_workspace = _Workspace()


def evaluate(packets: pa.Table, spec: fs.FeatureSpec) -> pa.Table:
    """The feature table (sorted by window, node) of packets whose ``ts`` and node are set.

    ``packets`` holds at least ``spec.input_columns()``; address columns may be
    fixed-size or variable binary of 16 bytes.
    """
    if not np.little_endian:
        raise NotImplementedError("the feature kernel reads addresses as little-endian words")
    program = compile_spec(spec)
    n = packets.num_rows
    if n == 0:
        return arrays.empty(spec.schema())
    ts = _values(packets.column("ts"), "ts")
    width = spec.window_ns
    first_window = int(ts.min()) // width
    n_windows = int(ts.max()) // width - first_window + 1
    window = _workspace.array("window", n, np.int64)
    _window_ids(ts, width, first_window, window)
    if n_windows > 2 * n + 1024:  # sparse in time: number only the windows that occur
        occupied, window = np.unique(window, return_inverse=True)
        window_index = occupied + first_window
        n_windows = len(occupied)
    else:
        window_index = np.arange(n_windows, dtype=np.int64) + first_window
    # Packet indices as int32 where they fit: every pass over the node order reads them.
    index = np.int32 if n < 2**31 else np.int64
    order = _workspace.array("order", n, index)
    starts = _window_order(window, n_windows, order)
    del window

    # Group: each window's packets in node order, and where each node's packets start.
    node_raw = _address_words(packets.column(spec.node), "node")
    threads = nb.get_num_threads()
    largest_window = int(np.diff(starts).max())
    perm = _workspace.array("perm", n, index)
    group_at = _workspace.array("group_at", n, np.int64)
    nodes = np.zeros(n_windows, np.int64)
    _group(order, starts, node_raw, perm, group_at, nodes,
           _workspace.array("keys", (threads, 2, largest_window), np.uint32),
           _workspace.array("items", (threads, largest_window), index))
    del order
    row_offsets = np.zeros(n_windows + 1, np.int64)
    np.cumsum(nodes, out=row_offsets[1:])
    rows = int(row_offsets[-1])
    # Rows are contiguous in perm across windows: row r's packets are
    # perm[row_start[r]:row_start[r + 1]].
    row_start = _workspace.array("row_start", rows + 1, np.int64)
    row_start[:rows] = group_at[np.repeat(starts[:-1] - row_offsets[:-1], nodes)
                                + np.arange(rows)]
    row_start[rows] = n
    del group_at
    largest = int(np.diff(row_start).max())

    # Aggregate column by column, each node's run of packets at a time.
    stats = _workspace.array("stats", (3, max(1, program.n_stats), rows), np.int64)
    numeric = _workspace.array("numeric", (4, max(1, program.n_numeric), rows), np.int64)
    squares = _workspace.array("squares", (max(1, program.n_numeric), rows), np.float64)
    share_features = np.flatnonzero(program.opcode == SHARE)
    share_index = np.full(len(program.opcode), -1, np.int64)
    share_index[share_features] = np.arange(len(share_features))
    hits = _workspace.array("hits", (max(1, len(share_features)), rows), np.int64, 0)
    counts = np.zeros((threads, 1), np.int32)
    all_valid = np.ones(1, np.uint8)
    for c, name in enumerate(program.narrow):
        column = packets.column(name)
        # Values keep their width (a variant of the kernel each): the random reads of a
        # window's values then stay in cache more often than widened copies would.
        values = _values(column, "values")
        valid = _validity(column, "valid")
        s, q = program.stat_of_slot[c], program.numeric_of_slot[c]
        top = int(values.max())  # values under nulls too: at worst a larger domain
        domain = top + 1 if s >= 0 and top < _MAX_DOMAIN else 0
        if domain > counts.shape[1]:
            counts = _workspace.array("counts", (threads, domain), np.int32, 0)
        on_column = share_features[program.pred_slot[share_features] == c]
        _narrow_aggregates(row_start, perm, values, all_valid if valid is None else valid,
                           valid is not None, s, q, program.std_of_slot[c], domain,
                           on_column, share_index[on_column], program.pred_kind,
                           program.pred_set, program.pred_clear, program.pred_values,
                           stats[0], stats[1], stats[2], numeric[0], numeric[1], numeric[2],
                           numeric[3], squares, hits,
                           _workspace.array(f"buffers_{values.dtype}", (threads, 2, largest),
                                            values.dtype), counts)
    wide_count = _workspace.array("wide_count", (max(1, len(program.wide)), rows), np.int64)
    capacity = 64
    while capacity < 2 * largest:
        capacity *= 2
    for c, name in enumerate(program.wide):
        column = packets.column(name)
        valid = _validity(column, "valid")
        has_nulls, valid = valid is not None, all_valid if valid is None else valid
        words = _address_words(column, "words")
        tables = _workspace.array("tables", (threads, capacity), np.int64, _EMPTY)
        keys = _workspace.array("v4_keys", n, np.uint32)
        if _v4_keys(words, valid, has_nulls, keys) == 0:  # all IPv4: 32-bit keys
            _distinct_v4(row_start, perm, keys, valid, has_nulls, wide_count[c],
                         _workspace.array("buffers_v4", (threads, largest), np.uint32), tables)
            continue
        hi, lo = _workspace.array("hi", n, np.uint64), _workspace.array("lo", n, np.uint64)
        ok = _workspace.array("ok", n, np.bool_)
        _gather_wide(perm, words, valid, has_nulls, hi, lo, ok)
        _wide_aggregates(row_start, hi, lo, ok, wide_count[c],
                         _workspace.array("buffers_lo", (threads, largest), np.uint64),
                         _workspace.array("buffers_hi", (threads, largest), np.uint64), tables)

    # One row per output column: each feature comes out contiguous. Results live in
    # Arrow's memory pool, which reuses freed memory; fresh numpy arrays of this size
    # would be page-faulted in anew for every slice. Validity is written for every row
    # of the features that can be null and read for no other.
    int_memory, ints = _arrow_array((max(1, program.n_int), rows), np.int64)
    float_memory, floats = _arrow_array((max(1, program.n_float), rows), np.float64)
    int_valid = _workspace.array("int_valid", ints.shape, np.bool_)
    float_valid = _workspace.array("float_valid", floats.shape, np.bool_)
    _features(row_start, program.opcode, program.slot, program.is_wide, program.out_index,
              program.stat_of_slot, program.numeric_of_slot, share_index, spec.window_seconds,
              stats[0], stats[1], stats[2], numeric[0], numeric[1], numeric[2], numeric[3],
              squares, hits, wide_count, ints, int_valid, floats, float_valid)

    node_memory, node_words = _arrow_array((rows, 2), np.uint64)
    window_memory, window_start = _arrow_array(rows, np.int64)
    _keys(node_raw, perm, row_start, row_offsets, window_index * width, node_words,
          window_start)
    columns = [pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), rows, [None, node_memory]),
               pa.Array.from_buffers(pa.int64(), rows, [None, window_memory])]
    for i, feature in enumerate(spec.features):
        j = program.out_index[i]
        if program.is_float[i]:
            memory, valid, dtype = float_memory, float_valid[j], pa.float64()
        else:
            memory, valid, dtype = int_memory, int_valid[j], pa.int64()
        bitmap = None
        if feature.agg not in fs.NEVER_NULL_AGGS and not valid.all():
            bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
        columns.append(pa.Array.from_buffers(dtype, rows,
                                             [bitmap, memory.slice(8 * j * rows, 8 * rows)]))
    return pa.Table.from_arrays(columns, schema=spec.schema())


def fixed_binary16(array: pa.Array) -> pa.FixedSizeBinaryArray:
    """A ``binary_view`` array of 16-byte values (nulls aside) as ``binary(16)``: its data
    buffer as it is where the values lie end to end in it (as Polars' Parquet reader
    leaves them), else gathered into new memory."""
    n = len(array)
    buffers = array.buffers()
    views = np.frombuffer(buffers[1], np.uint32, count=4 * (array.offset + n))[
        4 * array.offset:].reshape(n, 4)
    if n and len(buffers) == 3 and _views_in_place(views, 16):
        data = buffers[2].slice(int(views[0, 3]), 16 * n)
    else:
        parts = [np.frombuffer(b, np.uint8) for b in buffers[2:]] or [np.zeros(0, np.uint8)]
        starts = np.zeros(len(parts), np.int64)
        np.cumsum([len(p) for p in parts[:-1]], out=starts[1:])
        data, out = _arrow_array(max(1, 16 * n), np.uint8)
        _gather_views(views, np.concatenate(parts), starts, out)
    validity = pc.is_valid(array).buffers()[1] if array.null_count else None
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [validity, data])


def _arrow_array(shape, dtype) -> tuple[pa.Buffer, np.ndarray]:
    """Uninitialised memory from Arrow's pool, and a writable numpy view of it."""
    dtype = np.dtype(dtype)
    shape = shape if isinstance(shape, tuple) else (shape,)
    size = int(np.prod(shape))
    memory = pa.allocate_buffer(max(1, size) * dtype.itemsize)
    return memory, np.frombuffer(memory, dtype)[:size].reshape(shape)
