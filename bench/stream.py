"""Benchmark stream mode: the highest packet rate sustained with steady lag and flat memory.

    python bench/stream.py                      # embedded engine, then Spark; full length
    python bench/stream.py --quick              # smoke run: short steps, low Spark rates
    python bench/stream.py --engines embedded --json bench/out/stream.json

A feeder process writes rotating captures into a spool directory in real time, as
``tcpdump -G`` would: every ``--file-seconds`` one file holding that interval's packets,
timestamped with the wall clock, written under a hidden name and renamed in (atomic). The
packets are real traffic replayed: bench/ingest.py's seed capture (recorded with real
tools in a network namespace) tiled by its ``build_capture`` into tens of thousands of
hosts, cut to a 128-byte snap length (``tcpdump -s 128``: every header netsift decodes is
kept, payload is not) so the spool stays small in memory. Packets of a file are spread
evenly over its interval. The spool is on /dev/shm when there is one.

``netsift stream --spool SPOOL --out OUT --window 10s --lateness 2s --settle 0.2s`` runs
in a child process for the embedded engine; the Spark engine runs the same command with
``--engine spark --master local[2]``. Each second the monitor samples the job's RSS (the
process and its children: psutil), its lag (wall time minus the newest event time the job
has seen, from ``OUT/metrics.prom``), the machine's load, and deletes spool files the job
has finished with (its checkpoint says which; files of open windows stay, as the
checkpoint replays them after a crash).

The rate rises in steps (``--rates``), each held ``--step-seconds``. A step is *sustained*
when, after ``--warmup-seconds``, the lag does not grow (least-squares slope below
``--max-lag-slope`` s/s) and stays under ``--max-lag``, and RSS is flat (the peak of the
second half of the step at most 10 % above the peak of the first half: with tumbling
windows RSS is a saw tooth of one window's period, so peaks are compared). The first
step that is not sustained ends the ladder. The best sustained rate is then held for
``--sustain-seconds`` (default 300) in a fresh job to show it lasts.

Emission latency, two ways:

* *close -> written*: from the moment the watermark passes a window's end (the job reads
  a packet at least ``lateness`` newer) to its output files being written, measured by
  the job (``netsift_stream_last_emit_seconds``; embedded engine only);
* *end to end*: the output file's mtime minus the wall time at which the window's end
  plus the lateness passed; this adds the source's delay (the file holding the closing
  packet is published at the end of its interval, then settles).

Targets: >= 1 M packets/s sustained with the embedded engine; windows written within 2 s
of closing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest as ingest_bench  # noqa: E402  bench/ingest.py: seed capture and replay
from _common import DATA, OUT, REPO, format_table, machine, verdict, write_json  # noqa: E402

SNAPLEN = 128
TEMPLATE_PACKETS = 2_000_000
TARGET_RATE = 1_000_000
TARGET_EMIT_S = 2.0
NS = 1_000_000_000


# -- packets: the replayed seed, snapped --------------------------------------------------

def snapped_seed(seed: ingest_bench.Seed, snaplen: int) -> ingest_bench.Seed:
    """The seed with every frame cut to ``snaplen`` bytes (the record says so: incl_len)."""
    header = bytearray(seed.header)
    header[16:20] = snaplen.to_bytes(4, "little")
    records, offsets = [], []
    port_at = seed.port_at.copy()
    size = 0
    for i, off in enumerate(seed.offsets.tolist()):
        incl = int.from_bytes(seed.records[off + 8:off + 12].tobytes(), "little")
        keep = min(incl, snaplen)
        head = seed.records[off:off + 16].copy()
        head[8:12] = np.frombuffer(keep.to_bytes(4, "little"), np.uint8)
        records += [head, seed.records[off + 16:off + 16 + keep]]
        offsets.append(size)
        size += 16 + keep
        if port_at[i] >= 0 and port_at[i] + 2 > keep:
            port_at[i] = -1  # the client port was cut off: nothing to rewrite
    return dataclasses.replace(
        seed, header=bytes(header), records=np.concatenate(records),
        offsets=np.array(offsets, np.int64), port_at=port_at,
        digest=f"{seed.digest}s{snaplen}")


@dataclasses.dataclass
class Template:
    """Replayed records back to back; ``offsets[i]`` is where record i starts (and
    ``offsets[count]`` the end), relative to ``records``."""

    header: bytes
    records: np.ndarray
    offsets: np.ndarray

    @property
    def count(self) -> int:
        return len(self.offsets) - 1

    @property
    def bytes_per_packet(self) -> float:
        return len(self.records) / self.count


def load_template(packets: int = TEMPLATE_PACKETS) -> Template:
    """bench/ingest.py's replay of its seed, snapped to SNAPLEN bytes (cached in bench/data)."""
    seed_path = DATA / f"ingest-seed-v{ingest_bench.SEED_VERSION}.pcap"
    if not seed_path.exists():
        print(f"recording the seed capture with real tools -> {seed_path}", flush=True)
        ingest_bench.make_seed(seed_path)
    phases = json.loads(seed_path.with_suffix(".json").read_text())["phases"]
    seed = snapped_seed(ingest_bench.parse_seed(seed_path, phases), SNAPLEN)
    packets -= packets % seed.count  # whole copies: offsets follow from the seed's
    path = DATA / f"stream-{seed.digest}-b{ingest_bench.BUILD_VERSION}-{packets}.pcap"
    if not path.exists():
        print(f"building {packets:,} packets -> {path}", flush=True)
        ingest_bench.build_capture(seed, packets, path)
    raw = np.fromfile(path, dtype=np.uint8)
    index = np.arange(packets, dtype=np.int64)
    offsets = (index // seed.count) * len(seed.records) + seed.offsets[index % seed.count]
    return Template(header=raw[:24].tobytes(), records=raw[24:],
                    offsets=np.append(offsets, len(raw) - 24))


def capture_bytes(template: Template, first: int, n: int, t0_ns: int, span_ns: int
                  ) -> np.ndarray:
    """Records ``first .. first + n`` of the template (cyclically), timestamped evenly
    over ``[t0_ns, t0_ns + span_ns)``; without the global header."""
    pieces, at = [], []
    done = 0
    while done < n:
        start = (first + done) % template.count
        take = min(n - done, template.count - start)
        lo, hi = template.offsets[start], template.offsets[start + take]
        base = sum(len(p) for p in pieces)
        pieces.append(template.records[lo:hi])
        at.append(template.offsets[start:start + take] - lo + base)
        done += take
    block = np.concatenate(pieces) if len(pieces) > 1 else pieces[0].copy()
    _stamp(block, np.concatenate(at), t0_ns, span_ns)
    return block


@numba.njit(cache=True, nogil=True)
def _stamp(block, at, t0_ns, span_ns):
    """Little-endian seconds and microseconds into each record header, spread evenly."""
    n = len(at)
    for k in range(n):
        ts = t0_ns + k * span_ns // n
        sec, usec = ts // NS, (ts % NS) // 1000
        p = at[k]
        for b in range(4):
            block[p + b] = (sec >> (8 * b)) & 0xFF
            block[p + 4 + b] = (usec >> (8 * b)) & 0xFF
