"""Checkpoints and exactly-once outputs for stream jobs.

Output of emission ``k`` (the windows closed by one step) goes to files named by ``k``
(``features/part-k.parquet``, ``scores/part-k.parquet``) and is appended to
``alerts.jsonl``. The checkpoint, written after the outputs, records ``k``, the length of
``alerts.jsonl``, the finished inputs, the watermark state and the open windows' packets.
After a crash at any moment the job restarts from the last checkpoint: ``alerts.jsonl`` is
cut back to the recorded length, emissions after ``k`` are removed, and the same input
replayed from the same state produces the same emissions again, so no row is lost or
duplicated. Every file is written to a temporary name, fsynced and renamed.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

STATE = "state.json"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    pq.write_table(table, tmp, compression="zstd")
    _fsync(tmp)
    os.replace(tmp, path)


class Checkpoint:
    """The stream job's durable state in ``directory``."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> tuple[dict, pa.Table | None] | None:
        path = self.dir / STATE
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        pending = None
        if state.get("pending"):
            pending = feather.read_table(self.dir / state["pending"])
        return state, pending

    def save(self, state: dict, pending: pa.Table | None) -> None:
        state = dict(state)
        state["pending"] = None
        if pending is not None and pending.num_rows:
            name = f"pending-{state['emitted']:08d}-{uuid.uuid4().hex[:8]}.arrow"
            feather.write_feather(pending, self.dir / name, compression="zstd")
            _fsync(self.dir / name)
            state["pending"] = name
        tmp = self.dir / f".{STATE}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(state, sort_keys=True))
        _fsync(tmp)
        os.replace(tmp, self.dir / STATE)
        for old in self.dir.glob("pending-*.arrow"):
            if old.name != state["pending"]:
                old.unlink(missing_ok=True)


class Outputs:
    """features/, scores/ part files and alerts.jsonl under ``out``."""

    def __init__(self, out: Path):
        self.out = out
        self.alerts_path = out / "alerts.jsonl"
        out.mkdir(parents=True, exist_ok=True)

    def part(self, kind: str, seq: int) -> Path:
        return self.out / kind / f"part-{seq:08d}.parquet"

    def alerts_bytes(self) -> int:
        return self.alerts_path.stat().st_size if self.alerts_path.exists() else 0

    def rollback(self, emitted: int, alerts_bytes: int) -> None:
        """Undo whatever a killed run wrote after the checkpoint (emission > ``emitted``)."""
        for kind in ("features", "scores"):
            for path in (self.out / kind).glob("*"):
                if path.name.startswith("."):
                    path.unlink(missing_ok=True)  # a temp file the kill left
                    continue
                seq = int(path.stem.split("-")[1])
                if seq > emitted:
                    path.unlink()
        if self.alerts_path.exists() and self.alerts_path.stat().st_size > alerts_bytes:
            with open(self.alerts_path, "r+b") as f:
                f.truncate(alerts_bytes)
                f.flush()
                os.fsync(f.fileno())

    def write(self, seq: int, features: pa.Table, scores: pa.Table | None,
              alerts: list[dict]) -> None:
        atomic_write_parquet(features, self.part("features", seq))
        if scores is not None:
            atomic_write_parquet(scores, self.part("scores", seq))
        if alerts:
            with open(self.alerts_path, "ab") as f:
                f.write("".join(json.dumps(a, sort_keys=True) + "\n" for a in alerts).encode())
                f.flush()
                os.fsync(f.fileno())
