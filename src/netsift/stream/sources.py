"""Unbounded packet sources: a spool directory of rotating captures, or a live interface.

A spool file is *complete* when a newer file has appeared after it (rotation moved on, as
with ``tcpdump -G/-C`` or ``dumpcap -b``) or it has not changed for ``settle`` seconds.
Files are taken in (mtime, name) order, each exactly once: the caller records finished
files in its checkpoint and passes them back as ``done``, a mapping of name to the
modification time (ns) the file had when it was read. A name seen again with another
modification time is a new file (``tcpdump -W`` and ``-C -W`` ring buffers reuse names).

A live interface is read from a ``tcpdump``/``dumpcap`` subprocess writing pcap to a pipe,
so netsift itself needs no capture privilege.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path

from netsift.errors import CaptureError, UsageError

_IGNORED_PREFIXES = (".", "_")


def _spool_entries(spool: Path) -> list[tuple[int, str, int]]:
    """(mtime_ns, name, size) of candidate files, oldest first."""
    entries = []
    with os.scandir(spool) as it:
        for entry in it:
            if entry.name.startswith(_IGNORED_PREFIXES) or not entry.is_file():
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # rotated away between listing and stat
            entries.append((st.st_mtime_ns, entry.name, st.st_size))
    entries.sort()
    return entries


def _is_done(done: Mapping[str, int | None] | AbstractSet[str], name: str,
             mtime_ns: int) -> bool:
    if name not in done:
        return False
    recorded = done.get(name) if isinstance(done, Mapping) else None
    return recorded is None or recorded == mtime_ns


def completed_files(spool: Path, done: Mapping[str, int | None] | AbstractSet[str],
                    settle: float, *, now: float | None = None, drain: bool = False,
                    prune: bool = False) -> list[Path]:
    """Complete, not yet processed spool files, oldest first.

    ``done``: names already processed, as a set or as a dict of name to the modification
    time (ns) it had then (``None``: any). ``drain`` treats every file as complete (the
    writer has stopped). ``prune`` removes from the dict the names no longer in the
    spool, so what a long run remembers is bounded by what the spool holds.
    """
    if not spool.is_dir():
        raise UsageError(f"{spool}: spool directory does not exist")
    now = time.time() if now is None else now
    entries = _spool_entries(spool)
    if prune and isinstance(done, dict):
        present = {name for _mtime, name, _size in entries}
        for name in [n for n in done if n not in present]:
            del done[name]
    ready = []
    for i, (mtime_ns, name, _size) in enumerate(entries):
        if _is_done(done, name, mtime_ns):
            continue
        newer_exists = i + 1 < len(entries)
        settled = now - mtime_ns / 1e9 >= settle
        if drain or newer_exists or settled:
            ready.append(spool / name)
        else:
            break  # keep order: a file is never taken before an older incomplete one
    return ready


def watch_spool(spool: Path, done: dict[str, int | None], *, settle: float = 5.0,
                poll: float = 0.5, drain: bool = False,
                should_stop=lambda: False) -> Iterator[Path | None]:
    """Yield complete files as they appear; ``None`` when idle (lets callers flush).

    The caller adds each file it finishes to ``done``. With ``drain`` the files present
    now are yielded and the iterator ends.
    """
    while not should_stop():
        ready = completed_files(spool, done, settle, drain=drain, prune=True)
        for path in ready:
            if should_stop():
                return
            yield path
        if drain:
            return
        if not ready:
            yield None
            time.sleep(poll)


def capture_command(interface: str, tool: str | None = None,
                    capture_filter: str = "") -> list[str]:
    """The capture subprocess writing pcap to stdout, unbuffered per packet."""
    if not os.path.exists(f"/sys/class/net/{interface}") and interface != "any":
        raise UsageError(f"{interface}: no such network interface "
                         f"(have: {', '.join(sorted(os.listdir('/sys/class/net')))})")
    tool = tool or ("dumpcap" if shutil.which("dumpcap") else "tcpdump")
    if not shutil.which(tool):
        raise UsageError(f"{tool}: not installed (apt-get install tcpdump or tshark)")
    if tool == "dumpcap":
        cmd = [tool, "-q", "-i", interface, "-P", "-w", "-"]  # -P: pcap, not pcapng
    else:
        cmd = [tool, "-i", interface, "-U", "-w", "-", "--immediate-mode"]
    if capture_filter:
        cmd += ["-f", capture_filter] if tool == "dumpcap" else [capture_filter]
    return cmd


STOP_GRACE_S = 0.5  # a stopped capture program's last moments: see LiveCapture.interrupt


class LiveCapture:
    """A running capture subprocess; ``stdout`` is its pcap stream."""

    def __init__(self, interface: str, tool: str | None = None, capture_filter: str = ""):
        self.cmd = capture_command(interface, tool, capture_filter)
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.stdout = self.proc.stdout
        self.stopped = False  # we asked it to end: its exit status is ours, not a failure

    def interrupt(self) -> None:
        """Ask the capture to end (safe in a signal handler): its output then ends.

        The capture program runs ``STOP_GRACE_S`` more, so that packets on the wire before
        the request, still in the kernel's capture buffer (dumpcap reads it in blocks),
        reach its output rather than being dropped at its exit."""
        if self.stopped:
            return
        self.stopped = True
        timer = threading.Timer(STOP_GRACE_S, self._terminate)
        timer.daemon = True
        timer.start()

    def _terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()

    def failure(self, wait: float = 0.0) -> CaptureError | None:
        """Why the capture stopped, if it did, in one line.

        ``wait``: seconds to let it exit first (its output has ended, so it is exiting).
        """
        try:
            code = self.proc.wait(timeout=wait) if wait else self.proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is None or code == 0 or self.stopped:
            return None
        err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr \
            else ""
        detail = _reason(err, self.cmd[0]) or f"exit status {code}"
        if "permission" in err.lower() or "not permitted" in err.lower():
            detail = (f"no capture privilege ({detail}); run as root or grant "
                      f"CAP_NET_RAW,CAP_NET_ADMIN to {self.cmd[0]}")
        return CaptureError(f"{self.cmd[0]}: {detail}")

    def stop(self) -> None:
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# What capture programs print on stderr that is not the reason they stopped.
_CHATTER = ("capturing on", "listening on", "use ctrl-c", "file:", "usage:", "packets captured",
            "packets received", "packets dropped")


def _reason(stderr: str, tool: str) -> str:
    """The line of a capture program's stderr that says why it stopped, without its name."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.lower().startswith(_CHATTER)
             and not ln.lower().removeprefix(f"{tool}: ").startswith(_CHATTER)]
    named = [ln for ln in lines if ln.startswith(f"{tool}:")]
    line = named[0] if named else (lines[-1] if lines else "")
    return line.removeprefix(f"{tool}:").strip()
