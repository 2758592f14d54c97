"""Assemble a stream job from its configuration: feature spec, engine, optional model.

A closed window is featurised in node shards, one thread each (the kernel releases the
GIL): a node's features depend only on its own packets, so the rows are those of one
call over all packets, in the same (window, node) order. Not with ``validated_only``,
where a node's handshake involves its peers' packets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from netsift.features import NODE, WINDOW_START, FeatureSpec, compute_features
from netsift.stream.runner import StreamConfig, StreamJob

SHARD_MIN_ROWS = 1 << 20  # below this one call is as fast


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _threadsafe_kernels() -> bool:
    """Whether numba may run parallel kernels from two threads at once (not the
    ``workqueue`` layer). Unknown until a first parallel kernel has run: then no."""
    import numba

    try:
        return numba.threading_layer() in ("omp", "tbb")
    except ValueError:
        return False


def shard_of(nodes: pa.ChunkedArray | pa.Array, shards: int) -> np.ndarray:
    """Shard number (0 .. shards-1) of each 16-byte node address; nulls go to shard 0."""
    array = nodes.combine_chunks() if isinstance(nodes, pa.ChunkedArray) else nodes
    words = np.frombuffer(array.buffers()[1], np.uint64,
                          count=2 * (array.offset + len(array)))[2 * array.offset:]
    mixed = (words[1::2] ^ words[0::2]) * np.uint64(0x9E3779B97F4A7C15)
    return ((mixed >> np.uint64(40)) % np.uint64(shards)).astype(np.int64)


def sharded(featurize: Callable[[pa.Table], pa.Table], node: str,
            shards: int) -> Callable[[pa.Table], pa.Table]:
    """``featurize`` run on ``shards`` node partitions in parallel, rows merged in order."""
    def run(packets: pa.Table) -> pa.Table:
        if shards < 2 or packets.num_rows < SHARD_MIN_ROWS or not _threadsafe_kernels():
            return featurize(packets)
        shard = shard_of(packets.column(node), shards)

        def part(i: int) -> pa.Table:
            import numba

            # Per thread: the shards share the cores instead of each asking for all.
            numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS,
                                             _cores() // shards)))
            return featurize(packets.filter(pa.array(shard == i)))

        with ThreadPoolExecutor(shards, thread_name_prefix="netsift-shard") as pool:
            parts = list(pool.map(part, range(shards)))
        return pa.concat_tables(parts).sort_by([(WINDOW_START, "ascending"),
                                                (NODE, "ascending")])
    return run


def build_stream_job(config: StreamConfig) -> StreamJob:
    spec = FeatureSpec(window_ns=int(round(config.window_s * 1e9)), node=config.node,
                       validated_only=config.validated_only)
    score = None
    if config.model is not None:
        from netsift.pipeline import load_scorer

        score = load_scorer(config.model, spec)

    def featurize(packets: pa.Table) -> pa.Table:
        return compute_features(packets, spec)

    if not spec.validated_only:
        shards = min(4, _cores()) if config.shards is None else config.shards
        featurize = sharded(featurize, spec.node, shards)
    return StreamJob(config, featurize=featurize, score=score, columns=spec.input_columns())
