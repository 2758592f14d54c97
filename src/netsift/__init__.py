"""netsift: per-host behaviour features and security alerts from packet captures."""

import os

# The compiled kernels' OpenMP threads sleep when a parallel loop ends instead of
# spinning: between loops the core goes to the pipeline's other threads (Parquet decode
# and encode), about a tenth less CPU for the same work. Read when OpenMP first loads;
# a value set by the user is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from netsift.errors import CaptureError, NetsiftError, StorageError, UsageError
from netsift.ingest import CaptureReader, ReadStats, read_packets, read_table
from netsift.schema import PACKET_SCHEMA, address_from_text, address_to_text

__version__ = "0.1.0"

__all__ = [
    "PACKET_SCHEMA", "CaptureError", "CaptureReader", "NetsiftError", "ReadStats",
    "StorageError", "UsageError", "address_from_text", "address_to_text", "read_packets",
    "read_table", "__version__",
]
