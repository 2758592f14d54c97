"""The packet dataset on disk: Parquet (zstd), hive-partitioned by hour, written atomically.

Layout::

    OUT/date=2026-11-24/hour=13/<input-key>.parquet   one file per input per hour
    OUT/_manifest.json                                 what was ingested, from which inputs
    OUT/.tmp/                                          files being written (never read)

A file is written under ``.tmp`` and renamed into its partition only when complete, so a
reader never sees half a file. Names derive from the input's identity, so re-ingesting an
input after a crash overwrites its own files instead of adding duplicates. The manifest
records each input's path, size and mtime; an unchanged input is skipped on the next run.
Rows without a timestamp (pcapng Simple Packet Blocks) go to Spark's null partition
``date=__HIVE_DEFAULT_PARTITION__/hour=__HIVE_DEFAULT_PARTITION__``.

Readers find a dataset's files with :func:`packet_files` and refuse Parquet that is not a
packet table (:func:`check_packet_columns`). Outputs other commands write whole (feature
tables, analyze's files) go through :func:`scratch_path` names that tell a killed run's
leftovers (:func:`clear_leftovers`) from a live run's.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from netsift import arrays
from netsift.errors import StorageError, UsageError
from netsift.schema import PACKET_COLUMNS, PACKET_SCHEMA

MANIFEST = "_manifest.json"
TMP_DIR = ".tmp"
LOCK = ".lock"
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
HOUR_NS = 3600 * 1_000_000_000
# Time and record numbers rise packet by packet: delta encoding stores them in about a
# byte a packet (a fifth of zstd over plain values); every other column is dictionary
# encoded. Spark, Polars and pyarrow all read DELTA_BINARY_PACKED.
_DELTA_COLUMNS = ("ts", "record")
PARQUET_OPTIONS = {
    "compression": "zstd", "compression_level": 3, "store_schema": False,
    "use_dictionary": [name for name in PACKET_COLUMNS if name not in _DELTA_COLUMNS],
    "column_encoding": {name: "DELTA_BINARY_PACKED" for name in _DELTA_COLUMNS},
}


def partition_path(hour: int | None) -> str:
    """``date=YYYY-MM-DD/hour=HH`` for an hour number since the epoch (None: null ts)."""
    if hour is None:
        return f"date={NULL_PARTITION}/hour={NULL_PARTITION}"
    start = dt.datetime.fromtimestamp(hour * 3600, tz=dt.UTC)
    return f"date={start:%Y-%m-%d}/hour={start:%H}"


def _split_by_hour(batch: pa.RecordBatch) -> Iterator[tuple[int | None, pa.RecordBatch]]:
    """The batch's rows by hour since the epoch (floor division: hour h's file holds the
    times in [h, h + 1) hours), then rows without a time, under None."""
    ts = batch.column("ts")
    if ts.null_count == len(ts):
        yield None, batch
        return
    hours = arrays.values(ts) // HOUR_NS
    valid = arrays.valid(ts)
    present = hours if valid is None else hours[valid]
    first, last = int(present.min()), int(present.max())
    if first == last and valid is None:
        yield first, batch
        return
    for hour in np.unique(present):
        keep = hours == hour
        yield int(hour), batch.filter(arrays.boolean(keep if valid is None else keep & valid))
    if valid is not None:
        yield None, batch.filter(arrays.boolean(~valid))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Storage:
    """Translate OSError from disk writes into StorageError naming the output."""

    def __init__(self, root: Path):
        self.root = root

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, OSError) and not isinstance(
                exc, StorageError):
            if exc.errno == errno.ENOSPC:
                raise StorageError(f"{self.root}: no space left on device") from None
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise StorageError(f"{self.root}: cannot write ({exc.strerror})") from None
        return False


class PartitionedWriter:
    """Write packet batches of one input into hour partitions under ``root``.

    Files appear in their partitions only on :meth:`commit`; :meth:`abort` removes them.
    """

    def __init__(self, root: Path, key: str):
        self.root = root
        self.key = key
        self._open: dict[int | None, tuple[pq.ParquetWriter, Path, Path]] = {}
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        with _Storage(self.root):
            for hour, part in _split_by_hour(batch):
                writer = self._writer(hour, part.schema)
                writer.write_batch(part)
                self.rows += part.num_rows

    def _writer(self, hour: int | None, schema: pa.Schema) -> pq.ParquetWriter:
        if hour not in self._open:
            final = self.root / partition_path(hour) / f"{self.key}.parquet"
            tmp = self.root / TMP_DIR / f"{self.key}-{uuid.uuid4().hex[:8]}.parquet"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            self._open[hour] = (pq.ParquetWriter(tmp, schema, **PARQUET_OPTIONS), tmp, final)
        return self._open[hour][0]

    def commit(self) -> list[str]:
        """Close every file and rename it into place; return paths relative to root."""
        written = []
        with _Storage(self.root):
            for writer, tmp, final in self._open.values():
                writer.close()
                _fsync_file(tmp)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
                written.append(str(final.relative_to(self.root)))
        self._open.clear()
        return sorted(written)

    def abort(self) -> None:
        for writer, tmp, _ in self._open.values():
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the write already failed; clean up regardless
                pass
            tmp.unlink(missing_ok=True)
        self._open.clear()


@dataclass
class InputIdentity:
    """What makes an input the same input on a later run."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> InputIdentity:
        st = os.stat(path)
        return cls(os.path.realpath(path), st.st_size, st.st_mtime_ns)

    @property
    def key(self) -> str:
        digest = hashlib.sha1(f"{self.path}\0{self.size}\0{self.mtime_ns}".encode())
        return digest.hexdigest()[:20]


@dataclass
class Manifest:
    """``_manifest.json``: one entry per ingested input, keyed by its real path."""

    root: Path
    inputs: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> Manifest:
        path = root / MANIFEST
        if not path.exists():
            return cls(root)
        try:
            data = json.loads(path.read_text())
            return cls(root, dict(data["inputs"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"{path}: unreadable manifest ({exc}); move it away to "
                               "re-ingest everything") from None

    def is_current(self, ident: InputIdentity) -> bool:
        entry = self.inputs.get(ident.path)
        return bool(entry and entry["size"] == ident.size
                    and entry["mtime_ns"] == ident.mtime_ns
                    and all((self.root / f).exists() for f in entry["files"]))

    def stale_files(self, ident: InputIdentity) -> list[str]:
        """Files from an earlier version of this input, to delete before re-ingesting."""
        entry = self.inputs.get(ident.path)
        return list(entry["files"]) if entry else []

    def record(self, path: str, entry: dict) -> None:
        self.inputs[path] = entry
        self.save()

    def save(self) -> None:
        with _Storage(self.root):
            tmp = self.root / TMP_DIR / f"{MANIFEST}.{uuid.uuid4().hex[:8]}"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": 1, "inputs": self.inputs}, indent=1,
                                      sort_keys=True))
            _fsync_file(tmp)
            os.replace(tmp, self.root / MANIFEST)


class DatasetLock:
    """An exclusive lock on an output directory, so two ingests never interleave."""

    def __init__(self, root: Path):
        self.root = root
        self._fd: int | None = None

    def __enter__(self) -> DatasetLock:
        with _Storage(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.root / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StorageError(f"{self.root}: another netsift process is writing here") \
                from None
        # Leftovers of a killed run: never referenced by the manifest, safe to drop.
        shutil.rmtree(self.root / TMP_DIR, ignore_errors=True)
        return self

    def __exit__(self, *exc) -> None:
        try:
            (self.root / TMP_DIR).rmdir()  # only when empty
        except OSError:
            pass
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)


def dataset_files(root: str | os.PathLike) -> list[str]:
    """The committed Parquet files of a packet dataset (never those being written)."""
    base = Path(root)
    return sorted(str(p) for p in base.glob("date=*/hour=*/*.parquet"))


def scratch_path(path: Path, kind: str = "tmp") -> Path:
    """Where ``path`` is written before it is renamed into place (``kind`` "tmp"), or
    set aside while it is replaced ("old"): ``.NAME.KIND-HOST-PID-HEX`` beside it, so a
    later run can tell a killed run's leftovers (:func:`clear_leftovers`) from a live
    run's."""
    return path.with_name(f".{path.name}.{kind}-{socket.gethostname()}-{os.getpid()}-"
                          f"{uuid.uuid4().hex[:8]}")


def clear_leftovers(path: Path) -> None:
    """Undo what killed runs of this host left beside ``path`` (:func:`scratch_path`):
    partial writes are removed; a ``path`` set aside for replacement is removed if a new
    one is in place, else put back. Live processes' scratch is left alone."""
    host = socket.gethostname()
    try:
        beside = sorted(path.parent.iterdir())
    except FileNotFoundError:
        return
    for kind in ("old", "tmp"):
        prefix = f".{path.name}.{kind}-"
        for found in (p for p in beside if p.name.startswith(prefix)):
            owner, _, _ = found.name[len(prefix):].rpartition("-")
            owner_host, _, pid = owner.rpartition("-")
            if owner_host != host or not pid.isdigit() or _alive(int(pid)):
                continue
            if kind == "old" and not path.exists():
                os.replace(found, path)
            elif found.is_dir():
                shutil.rmtree(found, ignore_errors=True)
            else:
                found.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def packet_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The Parquet files of a packet dataset directory, a file, or a list of either."""
    paths = [source] if isinstance(source, str | os.PathLike) else list(source)
    files: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*.parquet")
                           if not any(part.startswith((".", "_")) for part in
                                      p.relative_to(path).parts))
            files.extend(found)
        elif path.is_file():
            files.append(str(path))
        else:
            raise UsageError(f"{path}: no such packet dataset or Parquet file")
    if not files:
        raise UsageError(f"no Parquet packet files in {', '.join(map(str, paths))}")
    return files


def check_packet_columns(path: str, schema: pa.Schema, columns: Sequence[str], *,
                         all_present: bool = True) -> None:
    """Refuse, in one line naming ``path``, Parquet that is not a packet table: a column
    of ``columns`` of a type no packet table gives it (addresses are binary, integer
    fields integers of any width and sign: Spark writes signed ones), or missing (unless
    not ``all_present``: a file of a dataset whose other files may have it)."""
    missing = [name for name in columns if name not in schema.names]
    for name in (c for c in columns if c not in missing):
        given, expected = schema.field(name).type, PACKET_SCHEMA.field(name).type
        if pa.types.is_fixed_size_binary(expected):
            fits = (pa.types.is_fixed_size_binary(given) and given.byte_width == 16) or \
                pa.types.is_binary(given) or pa.types.is_large_binary(given) or \
                pa.types.is_binary_view(given)
        elif pa.types.is_integer(expected):
            fits = pa.types.is_integer(given)
        else:
            fits = given == expected
        if not fits:
            raise UsageError(f"{path}: not a packet table (column {name} is {given}, "
                             f"not {expected}; netsift ingest writes one)")
    if missing and all_present:
        raise UsageError(f"{path}: not a packet table (no column {', '.join(missing)}; "
                         "netsift ingest writes one)")


def read_dataset(root: str | os.PathLike) -> pa.Table:
    """A whole packet dataset as one Arrow table (small datasets, tests)."""
    files = dataset_files(root)
    if not files:
        from netsift.ingest.reader import _empty_schema
        return pa.Table.from_batches([], schema=_empty_schema())
    return pa.concat_tables(pq.read_table(f, schema=None) for f in files)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_stream(batches: Iterable[pa.RecordBatch], root: Path, key: str) -> tuple[int, list]:
    """Write batches into partitions under root atomically; return (rows, files)."""
    writer = PartitionedWriter(root, key)
    try:
        for batch in batches:
            writer.write(batch)
        return writer.rows, writer.commit()
    except BaseException:
        writer.abort()
        raise
