"""netsift: per-host behaviour features and security alerts from packet captures."""

from netsift.errors import CaptureError, NetsiftError, StorageError, UsageError
from netsift.ingest import CaptureReader, ReadStats, read_packets, read_table
from netsift.schema import PACKET_SCHEMA, address_from_text, address_to_text

__version__ = "0.1.0"

__all__ = [
    "PACKET_SCHEMA", "CaptureError", "CaptureReader", "NetsiftError", "ReadStats",
    "StorageError", "UsageError", "address_from_text", "address_to_text", "read_packets",
    "read_table", "__version__",
]
