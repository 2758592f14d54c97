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
when, after ``--warmup-seconds``, the lag stays under ``--max-lag`` (5 s, a few file
periods; Spark 20 s) and does not grow (least-squares slope under ``--max-lag-slope``,
0.05 s/s: the saw tooth of file rotation leaves a fit over 35 s uncertain by about
0.02 s/s; in the 300 s hold any real growth soon passes the lag bound), and RSS is flat
(the peak of the second half of the step at most 10 % above the peak of the first half;
RSS is sampled five times a second, as with tumbling windows it is a saw tooth of one
window's period). The first step that is not sustained ends the ladder. The best
sustained rate is then held for ``--sustain-seconds`` (default 300) in a fresh job to
show it lasts; for the embedded engine so is the target rate (1 M/s), where the emission
latency target is judged.

Emission latency, two ways:

* *close -> written*: from the moment the watermark passes a window's end (the job reads
  a packet at least ``lateness`` newer) to its output files being written, measured by
  the job (``netsift_stream_last_emit_seconds``; embedded engine only);
* *end to end*: the output file's mtime minus the wall time at which the window's end
  plus the lateness passed; this adds the source's delay (the file holding the closing
  packet is published at the end of its interval, then settles).

Targets: >= 1 M packets/s sustained with the embedded engine; at that rate, windows
written within 2 s of closing (max over the 300 s hold).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
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
from _common import DATA, OUT, format_table, machine, verdict, write_json  # noqa: E402

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


# -- the feeder: a spool written in real time --------------------------------------------

def feed(spool: Path, start_ns: int, schedule: list[tuple[int, float]], file_s: float,
         status: Path) -> None:
    """Write ``schedule`` ((packets/s, seconds), ...) into ``spool`` from ``start_ns`` on.

    Each file holds ``file_s`` of event time; it is written under a hidden name first and
    renamed in when the wall clock reaches its end, as a rotating capture would close it.
    """
    template = load_template()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    t, seq, cursor, packets, behind_max = start_ns, 0, 0, 0, 0.0
    for rate, seconds in schedule:
        end = t + int(seconds * NS)
        while t < end and not stopping:
            span = min(int(file_s * NS), end - t)
            n = max(1, round(rate * span / NS))
            block = capture_bytes(template, cursor, n, t, span)
            name = f"{seq:09d}.pcap"
            tmp = spool / f".{name}"
            with open(tmp, "wb") as out:
                out.write(template.header)
                out.write(memoryview(block))
            t += span
            wait = t / NS - time.time()
            if wait > 0:
                time.sleep(wait)
            behind_max = max(behind_max, -wait)
            os.replace(tmp, spool / name)
            seq, cursor, packets = seq + 1, cursor + n, packets + n
            _write_json_atomic(status, {"files": seq, "packets": packets,
                                        "behind_max_s": behind_max, "event_ns": t})


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# -- the job under test, in a child process ----------------------------------------------

def run_job(engine: str, spool: str, out: str, window: str, lateness: str, master: str,
            shards: int | None) -> None:
    """The stream job over ``spool``, through netsift's Python API (as ``netsift stream``
    runs it), until SIGTERM."""
    from netsift.features import parse_duration

    window_ns, lateness_ns = parse_duration(window), parse_duration(lateness)
    if engine == "embedded":
        from netsift.stream.job import build_stream_job
        from netsift.stream.runner import StreamConfig

        job = build_stream_job(StreamConfig(
            out=Path(out), window_s=window_ns / NS, lateness_s=lateness_ns / NS,
            settle_s=0.2, poll_s=0.1, shards=shards))
        job.install_signal_handlers()
        job.run_spool(Path(spool))
        return
    import warnings

    from netsift.platform.spark import get_session
    from netsift.stream.spark_stream import SparkStreamConfig, SparkStreamJob

    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas",
                            FutureWarning)
    # The heap committed and touched at start-up: RSS then shows growth beyond the heap
    # (which -Xmx bounds), not the JVM's lazy heap expansion.
    spark = get_session(master, app_name="netsift-bench-stream",
                        conf={"spark.sql.shuffle.partitions": "2",
                              "spark.driver.memory": "2g",
                              "spark.driver.extraJavaOptions":
                                  "-Xms2g -XX:+AlwaysPreTouch"})
    job = SparkStreamJob(SparkStreamConfig(
        spool=Path(spool), out=Path(out), window_ns=window_ns, lateness_ns=lateness_ns,
        settle_s=0.2, poll_s=0.2), spark)
    signal.signal(signal.SIGTERM, job.stop)
    signal.signal(signal.SIGINT, job.stop)
    job.run()
    spark.stop()


# -- the monitor ---------------------------------------------------------------------------

@dataclasses.dataclass
class Sample:
    t: float  # wall clock
    lag: float | None  # wall clock minus the newest event time the job has seen
    rss: int  # job process tree, peak over the second
    job_cpu: float  # percent of one core, job process tree
    machine_cpu: float  # percent of all cores
    load: float  # 1-minute load average
    packets: int  # taken by the job
    feeder_cpu: float


@dataclasses.dataclass
class Emission:
    written: float  # wall clock: output file mtime
    window_end: float  # newest window in it, its end (event time = wall clock)
    close_to_written: float | None  # measured by the job


@dataclasses.dataclass
class Step:
    engine: str
    rate: int
    seconds: float
    samples: list[Sample] = dataclasses.field(default_factory=list)
    emissions: list[Emission] = dataclasses.field(default_factory=list)
    feeder_behind_s: float = 0.0
    early: tuple[int, int] = (0, 0)  # windows written from early featurisation, redone
    verdict: dict = dataclasses.field(default_factory=dict)


def _metrics(path: Path) -> dict[str, float]:
    values = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


def _tree(proc) -> list:
    import psutil

    with contextlib.suppress(psutil.Error):
        return [proc, *proc.children(recursive=True)]
    return []


class _CpuMeter:
    """Percent of one core used by a process tree between calls."""

    def __init__(self, root):
        self.root = root
        self.last, self.cpu = time.monotonic(), self._cpu()

    def _cpu(self) -> float:
        total = 0.0
        for proc in _tree(self.root):
            with contextlib.suppress(Exception):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def __call__(self) -> float:
        now, cpu = time.monotonic(), self._cpu()
        percent = 100 * (cpu - self.cpu) / max(now - self.last, 1e-6)
        self.last, self.cpu = now, cpu
        return max(percent, 0.0)


def _rss(root) -> int:
    total = 0
    for proc in _tree(root):
        with contextlib.suppress(Exception):
            total += proc.memory_info().rss
    return total


def _release_spool(engine: str, spool: Path, checkpoint: Path) -> None:
    """Delete spool files the job has finished with (embedded: unless they hold packets
    of open windows, which its checkpoint replays after a crash)."""
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((checkpoint / "state.json").read_text())
        done = {Path(name).name for name in state["files_done"]}
        keep = {entry[0] for entry in state.get("replay", [])}
        for name in done - keep:
            (spool / name).unlink(missing_ok=True)


def _new_emissions(out: Path, seen: set[str], width_s: float) -> list[tuple[int, Emission]]:
    """Output parts written since the last call: (emission number, what it holds)."""
    import pyarrow.parquet as pq

    found = []
    for path in sorted((out / "features").glob("part-*.parquet")):
        if path.name in seen:
            continue
        seen.add(path.name)
        with contextlib.suppress(OSError):
            starts = pq.read_table(path, columns=["window_start"]).column(0)
            if len(starts) == 0:
                continue
            newest = max(starts.to_pylist()) / NS
            found.append((int(path.stem.split("-")[1]), Emission(
                written=path.stat().st_mtime, window_end=newest + width_s,
                close_to_written=None)))
    return found


def _wait_ready(proc, out: Path, spool: Path, template: Template, timeout: float) -> None:
    """Until the job has taken one small capture (the engine is up: Spark's JVM too)."""
    primer = spool / "000000000-primer.pcap"
    now = time.time_ns()
    tmp = spool / f".{primer.name}"
    tmp.write_bytes(template.header + capture_bytes(template, 0, 1, now, 1000).tobytes())
    os.replace(tmp, primer)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (out.parent / "job.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the stream job exited {proc.returncode} while starting:\n"
                               f"{log}")
        if _metrics(out / "metrics.prom").get("netsift_stream_packets_total", 0) >= 1:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the stream job took no packet within {timeout:.0f} s")


def session(engine: str, schedule: list[int], step_s: float, args, workdir: Path,
            stop_early: bool) -> list[Step]:
    """One job and one feeder through ``schedule`` (packets/s per step); the steps."""
    import psutil

    spool, out = workdir / "spool", workdir / "out"
    shutil.rmtree(workdir, ignore_errors=True)
    spool.mkdir(parents=True)
    template = load_template()
    width_s = args.window_s
    job_cmd = [sys.executable, __file__, "--job", engine, str(spool), str(out),
               f"{round(args.window_s * 1000)}ms", f"{round(args.lateness_s * 1000)}ms",
               args.master,
               str(args.shards or 0)]
    with open(workdir / "job.log", "wb") as log:
        job = subprocess.Popen(job_cmd, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    feeder = None
    steps = [Step(engine, rate, step_s) for rate in schedule]
    try:
        _wait_ready(job, out, spool, template, timeout=300)
        start = time.time() + 1.0
        file_s = args.file_seconds if engine == "embedded" else args.spark_file_seconds
        status = workdir / "feeder.json"
        plan = json.dumps({"spool": str(spool), "start_ns": int(start * NS),
                           "schedule": [(r, step_s) for r in schedule], "file_s": file_s,
                           "status": str(status)})
        feeder = subprocess.Popen([sys.executable, __file__, "--feed", plan],
                                  start_new_session=True)
        root, feeder_proc = psutil.Process(job.pid), psutil.Process(feeder.pid)
        job_cpu, feeder_cpu = _CpuMeter(root), _CpuMeter(feeder_proc)
        psutil.cpu_percent()
        seen: set[str] = set()
        awaiting: dict[int, Emission] = {}
        checkpoint = out / ("_checkpoint" if engine == "embedded" else "_checkpoint_spark")
        for i, step in enumerate(steps):
            step_end = start + (i + 1) * step_s
            while time.time() < step_end:
                # RSS five times a second, so the peak of a short emission is seen.
                rss, tick = 0, time.time() + min(1.0, max(0.0, step_end - time.time()))
                while time.time() < tick:
                    time.sleep(max(0.0, min(0.2, tick - time.time())))
                    rss = max(rss, _rss(root))
                if job.poll() is not None:
                    raise RuntimeError(f"the stream job exited {job.returncode}: see "
                                       f"{workdir / 'job.log'}")
                metrics = _metrics(out / "metrics.prom")
                now = time.time()
                event = metrics.get("netsift_stream_event_time_seconds")
                step.samples.append(Sample(
                    t=now, lag=None if event is None else now - event, rss=rss,
                    job_cpu=job_cpu(), machine_cpu=psutil.cpu_percent(),
                    load=os.getloadavg()[0],
                    packets=int(metrics.get("netsift_stream_packets_total", 0)),
                    feeder_cpu=feeder_cpu()))
                for seq, emission in _new_emissions(out, seen, width_s):
                    index = min(len(steps) - 1, max(0, int(
                        (emission.window_end + args.lateness_s - start) // step_s)))
                    steps[index].emissions.append(emission)
                    awaiting[seq] = emission
                # The job's own measure of its latest emission, once its metrics say so.
                latest = awaiting.pop(int(metrics.get("netsift_stream_emissions_total", 0)),
                                      None)
                if latest is not None and "netsift_stream_last_emit_seconds" in metrics:
                    latest.close_to_written = metrics["netsift_stream_last_emit_seconds"]
                _release_spool(engine, spool, checkpoint)
            with contextlib.suppress(OSError, ValueError):
                step.feeder_behind_s = json.loads(status.read_text())["behind_max_s"]
            metrics = _metrics(out / "metrics.prom")
            step.early = (int(metrics.get("netsift_stream_early_windows_total", 0)),
                          int(metrics.get("netsift_stream_early_stale_total", 0)))
            step.verdict = judge(step, args)
            print(step_line(step), flush=True)
            if stop_early and not step.verdict["sustained"]:
                return steps[:i + 1]
        return steps
    finally:
        for proc in (feeder, job):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (feeder, job):
            if proc is not None:
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if not args.keep:
            shutil.rmtree(spool, ignore_errors=True)


def _lag_slope(times: np.ndarray, lags: np.ndarray) -> float:
    """Growth of the lag in seconds per second: the least-squares slope over the samples.
    The lag is a saw tooth of the file period around a level; a job that falls behind
    raises the level."""
    if len(times) < 3:
        return float("nan")
    return float(np.polyfit(times - times[0], lags, 1)[0])


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def judge(step: Step, args) -> dict:
    """Sustained: after warm-up, lag not growing and bounded, RSS peaks flat."""
    t0 = step.samples[0].t if step.samples else 0.0
    steady = [s for s in step.samples if s.t - t0 >= args.warmup_seconds]
    lagged = [s for s in steady if s.lag is not None]
    slope = _lag_slope(np.array([s.t for s in lagged]), np.array([s.lag for s in lagged]))
    lag_max = max((s.lag for s in lagged), default=float("nan"))
    half = len(steady) // 2
    first = max((s.rss for s in steady[:half]), default=0)
    second = max((s.rss for s in steady[half:]), default=0)
    growth = (second - first) / first if first else float("nan")
    taken = (steady[-1].packets - steady[0].packets) / (steady[-1].t - steady[0].t) \
        if len(steady) > 1 and steady[-1].t > steady[0].t else float("nan")
    close = [e.close_to_written for e in step.emissions if e.close_to_written is not None]
    end_to_end = [e.written - (e.window_end + args.lateness_s) for e in step.emissions]
    file_s = args.file_seconds if step.engine.startswith("embedded") else \
        args.spark_file_seconds
    feeder_ok = step.feeder_behind_s <= file_s
    max_lag = args.max_lag if step.engine.startswith("embedded") else args.spark_max_lag
    sustained = bool(lagged) and slope < args.max_lag_slope and lag_max < max_lag \
        and growth < 0.10 and feeder_ok
    return {
        "sustained": sustained, "lag_slope": slope, "lag_max": lag_max,
        "lag_p50": _percentile([s.lag for s in lagged], 50), "rss_first": first,
        "rss_second": second, "rss_growth": growth, "taken_rate": taken,
        "job_cpu": float(np.mean([s.job_cpu for s in steady])) if steady else None,
        "feeder_cpu": float(np.mean([s.feeder_cpu for s in steady])) if steady else None,
        "machine_cpu": float(np.mean([s.machine_cpu for s in steady])) if steady else None,
        "load": float(np.mean([s.load for s in steady])) if steady else None,
        "close_to_written": close, "end_to_end": end_to_end, "feeder_ok": feeder_ok,
    }


STEP_HEADERS = ("engine", "rate", "taken/s", "lag p50 s", "lag max s", "lag slope",
                "RSS MiB", "RSS growth", "job CPU%", "machine CPU%", "load", "emit p50 s",
                "emit max s", "e2e p50 s", "e2e max s", "sustained")


def step_row(step: Step) -> tuple:
    v = step.verdict
    close, e2e = v["close_to_written"], v["end_to_end"]
    return (step.engine, step.rate, v["taken_rate"], v["lag_p50"], v["lag_max"],
            v["lag_slope"], v["rss_second"] / 2**20, f"{100 * v['rss_growth']:+.1f}%",
            v["job_cpu"], v["machine_cpu"], v["load"], _percentile(close, 50),
            max(close, default=None), _percentile(e2e, 50), max(e2e, default=None),
            ("yes" if v["sustained"] else "no") + ("" if v["feeder_ok"] else " (feeder late)"))


def step_line(step: Step) -> str:
    v = step.verdict
    close = v["close_to_written"]
    return (f"  {step.engine} {step.rate:,}/s: taken {v['taken_rate']:,.0f}/s, lag max "
            f"{v['lag_max']:.2f} s (slope {v['lag_slope']:+.3f}), RSS "
            f"{v['rss_second'] / 2**20:,.0f} MiB ({100 * v['rss_growth']:+.1f}%), emit max "
            f"{max(close, default=float('nan')):.2f} s, early {step.early[0]} "
            f"(redone {step.early[1]}), load {v['load'] or 0:.1f}: "
            f"{'sustained' if v['sustained'] else 'not sustained'}"
            f"{'' if v['feeder_ok'] else ' (feeder late)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--engines", nargs="+", choices=("embedded", "spark"),
                        default=["embedded", "spark"])
    parser.add_argument("--rates", type=float, nargs="+",
                        default=[250e3, 500e3, 1e6, 1.5e6, 2e6],
                        help="embedded engine: packets/s per step (250k 500k 1M 1.5M 2M)")
    parser.add_argument("--spark-rates", type=float, nargs="+",
                        default=[10e3, 25e3, 50e3, 100e3, 200e3],
                        help="Spark engine: packets/s per step (10k 25k 50k 100k 200k)")
    parser.add_argument("--step-seconds", type=float, default=60)
    parser.add_argument("--sustain-seconds", type=float, default=300,
                        help="then hold the best sustained rate this long (0: skip)")
    parser.add_argument("--warmup-seconds", type=float, default=25,
                        help="left out of each step's judgement (two windows and more)")
    parser.add_argument("--file-seconds", type=float, default=1.0,
                        help="event time per spool file, embedded (tcpdump -G 1)")
    parser.add_argument("--spark-file-seconds", type=float, default=5.0,
                        help="event time per spool file, Spark (one micro-batch each)")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--lateness-s", type=float, default=2.0)
    parser.add_argument("--max-lag-slope", type=float, default=0.05,
                        help="lag growth allowed, seconds per second (0.05)")
    parser.add_argument("--max-lag", type=float, default=5.0,
                        help="lag allowed after warm-up, embedded, seconds (5: a few file "
                             "periods)")
    parser.add_argument("--spark-max-lag", type=float, default=20.0,
                        help="lag allowed after warm-up, Spark, seconds (20)")
    parser.add_argument("--master", default="local[2]", help="Spark master (local[2])")
    parser.add_argument("--shards", type=int, default=0,
                        help="embedded: featurising threads (0: netsift's default)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 40 s steps, 250k and 1M (Spark 10k), every step run, "
                             "60 s hold")
    parser.add_argument("--keep", action="store_true", help="keep the spool afterwards")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write results here")
    parser.add_argument("--feed", help=argparse.SUPPRESS)
    parser.add_argument("--job", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.feed:
        plan = json.loads(args.feed)
        feed(Path(plan["spool"]), plan["start_ns"], plan["schedule"], plan["file_s"],
             Path(plan["status"]))
        return 0
    if args.job:
        engine, spool, out, window, lateness, master, shards = args.job
        run_job(engine, spool, out, window, lateness, master, int(shards) or None)
        return 0
    # SIGTERM (kill, nohup'd runs ignore SIGINT) as an interrupt: jobs are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.quick:
        args.rates, args.spark_rates = [250e3, 1e6], [10e3]
        args.step_seconds, args.sustain_seconds, args.warmup_seconds = 40, 60, 15
    load_template()  # build the cached capture before anything is timed
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else OUT
    results: dict[str, dict] = {}
    table: list[Step] = []
    for engine in args.engines:
        rates = [int(r) for r in (args.rates if engine == "embedded" else args.spark_rates)]
        print(f"{engine}: steps {', '.join(f'{r:,}' for r in rates)} packets/s, "
              f"{args.step_seconds:.0f} s each", flush=True)
        with tempfile.TemporaryDirectory(dir=root, prefix="netsift-bench-stream-") as tmp:
            ladder = session(engine, rates, args.step_seconds, args, Path(tmp) / "ladder",
                             stop_early=not args.quick)
            table += ladder
            best = max((s.rate for s in ladder if s.verdict["sustained"]), default=None)
            # The best rate is held to show it lasts; the embedded engine also holds the
            # target rate, where the emission latency target is judged.
            holds = [] if best is None or args.sustain_seconds <= 0 else [best]
            if engine == "embedded" and holds and best > TARGET_RATE:
                holds.append(TARGET_RATE)
            hold = []
            for rate in holds:
                print(f"{engine}: holding {rate:,} packets/s for {args.sustain_seconds:.0f} s",
                      flush=True)
                held = session(engine, [rate], args.sustain_seconds, args,
                               Path(tmp) / f"hold-{rate}", stop_early=False)
                for step in held:
                    step.engine = f"{engine} (hold {args.sustain_seconds:.0f} s)"
                hold += held
            table += hold
        results[engine] = {"best": best, "steps": ladder, "hold": hold}
    print()
    print(format_table(STEP_HEADERS, [step_row(s) for s in table]))
    print()
    lines = summary_lines(results, args)
    print("\n".join(lines))
    if args.json:
        write_json(args.json, {
            "machine": machine(), "args": {k: v for k, v in vars(args).items()
                                           if k not in ("feed", "job", "json")},
            "steps": [{"engine": s.engine, "rate": s.rate, "seconds": s.seconds,
                       "feeder_behind_s": s.feeder_behind_s, "early_windows": s.early[0],
                       "early_redone": s.early[1], **s.verdict,
                       "samples": [dataclasses.asdict(x) for x in s.samples]}
                      for s in table],
            "summary": lines})
    return 0


def summary_lines(results: dict[str, dict], args) -> list[str]:
    lines = []
    for engine, result in results.items():
        best, steps = result["best"], result["steps"] + result["hold"]
        best_held = next((s for s in result["hold"] if s.rate == best), None)
        best_text = f"{best:,} packets/s" if best else "none"
        if best_held is not None:
            best_text += (f", held {args.sustain_seconds:.0f} s: "
                          f"{'sustained' if best_held.verdict['sustained'] else 'NOT sustained'}")
        lines.append(f"{engine}: best sustained rate {best_text}")
        bases = result["hold"] or [s for s in result["steps"] if s.rate == best]
        for basis in bases:
            close, e2e = basis.verdict["close_to_written"], basis.verdict["end_to_end"]
            if close:
                lines.append(f"{engine}: close -> written at {basis.rate:,}/s: p50 "
                             f"{_percentile(close, 50):.2f} s, p99 "
                             f"{_percentile(close, 99):.2f} s, max {max(close):.2f} s "
                             f"({len(close)} emissions)")
            if e2e:
                lines.append(f"{engine}: end to end (window end + lateness -> file) at "
                             f"{basis.rate:,}/s: p50 {_percentile(e2e, 50):.2f} s, p99 "
                             f"{_percentile(e2e, 99):.2f} s, max {max(e2e):.2f} s")
        loads = [s.verdict["load"] for s in steps if s.verdict.get("load") is not None]
        if loads:
            lines.append(f"{engine}: machine load average during the run "
                         f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")
        if engine == "embedded":
            at_target = next((s for s in result["hold"] if s.rate == TARGET_RATE), None)
            sustained_1m = bool(best and best >= TARGET_RATE and
                                (at_target is None or at_target.verdict["sustained"]))
            lines.append(f"embedded >= {TARGET_RATE:,} packets/s sustained: "
                         f"{verdict(sustained_1m)}")
            close = at_target.verdict["close_to_written"] if at_target else []
            if close:
                lines.append(f"embedded windows written within {TARGET_EMIT_S:.0f} s of "
                             f"closing at {TARGET_RATE:,}/s (max): "
                             f"{verdict(max(close) <= TARGET_EMIT_S)}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
