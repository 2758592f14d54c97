"""The netsift command: help everywhere, one-line errors, exit codes, stdin."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from netsift import store
from netsift.cli import build_parser

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "lan.pcap.gz"


def netsift(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netsift.cli", *args], input=stdin,
                          capture_output=True, timeout=300)


def _subcommands() -> list[str]:
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", [[]] + [[c] for c in _subcommands()])
def test_every_command_has_help(command):
    proc = netsift(*command, "--help")
    assert proc.returncode == 0
    assert b"usage: netsift" in proc.stdout


def test_ingest_sample_prints_summary(tmp_path):
    proc = netsift("ingest", str(SAMPLE), "--out", str(tmp_path / "ds"))
    assert proc.returncode == 0, proc.stderr
    assert b"1 ingested: 2,295 packets" in proc.stdout
    assert len(store.dataset_files(tmp_path / "ds")) == 1


def test_ingest_from_stdin(tmp_path):
    proc = netsift("ingest", "-", "--out", str(tmp_path / "ds"),
                   stdin=gzip.decompress(SAMPLE.read_bytes()))
    assert proc.returncode == 0, proc.stderr
    table = store.read_dataset(tmp_path / "ds")
    assert table.num_rows == 2295
    assert set(table.column("source").to_pylist()) == {"stdin"}


def test_missing_and_foreign_files_fail_with_one_line_each(tmp_path):
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a capture\n")
    proc = netsift("ingest", str(tmp_path / "absent.pcap"), str(foreign), str(SAMPLE),
                   "--out", str(tmp_path / "ds"))
    assert proc.returncode == 1
    err = proc.stderr.decode().strip().splitlines()
    assert err == [f"netsift: error: {tmp_path / 'absent.pcap'}: no such file",
                   f"netsift: error: {foreign}: not a pcap or pcapng capture "
                   "(starts with 0x6e6f7420)"]
    assert b"1 ingested, 2 failed: 2,295 packets" in proc.stdout


def test_directory_input_skips_non_captures_without_failing(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "a.pcap.gz").write_bytes(SAMPLE.read_bytes())
    (spool / "README").write_text("captures rotate here\n")
    proc = netsift("ingest", str(spool), "--out", str(tmp_path / "ds"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode().startswith(f"netsift: skipped: {spool / 'README'}:")
    assert b"1 ingested, 1 not captures" in proc.stdout


def test_empty_directory_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = netsift("ingest", str(tmp_path / "empty"), "--out", str(tmp_path / "ds"))
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == (
        f"netsift: error: {tmp_path / 'empty'}: directory holds no files to ingest")


def test_bad_option_is_usage_error():
    proc = netsift("ingest", str(SAMPLE))
    assert proc.returncode == 2
    assert b"--out" in proc.stderr and b"Traceback" not in proc.stderr
    proc = netsift("ingest", str(SAMPLE), "--out", "x", "--jobs", "0")
    assert proc.returncode == 2 and b"must be at least 1" in proc.stderr


def test_info_describes_capture():
    proc = netsift("info", str(SAMPLE))
    assert proc.returncode == 0
    assert proc.stdout.decode().startswith(f"{SAMPLE}: pcap (gzip), 2,295 packets, ")
