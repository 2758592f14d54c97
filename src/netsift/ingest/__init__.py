"""Capture readers: pcap, pcapng (plain or gzip/xz/bzip2/zstd) -> Arrow packet batches."""

from netsift.ingest._jitcache import ensure_fresh

ensure_fresh()

from netsift.ingest.reader import CaptureReader, ReadStats, read_packets, read_table  # noqa: E402

__all__ = ["CaptureReader", "ReadStats", "read_packets", "read_table"]
