"""Capture readers: pcap, pcapng (plain or gzip/xz/bzip2/zstd) -> Arrow packet batches."""

from netsift.ingest.reader import CaptureReader, ReadStats, read_packets, read_table

__all__ = ["CaptureReader", "ReadStats", "read_packets", "read_table"]
