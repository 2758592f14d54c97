"""Reasons a reader skips bytes or records; counted per file and reported, never silent.

Compiled readers bump ``counters[INDEX]``; :func:`describe` turns counters into text.
"""

from __future__ import annotations

import numpy as np

BAD_RECORD_LENGTH = 0  # a record header whose lengths cannot be right (resynchronised)
TRUNCATED_RECORD = 1  # the file ends inside a record or block
UNSUPPORTED_LINKTYPE = 2  # a packet on an interface whose link type is not decoded
BAD_BLOCK = 3  # a pcapng block with an impossible or mismatched length (resynchronised)
UNKNOWN_INTERFACE = 4  # a pcapng packet naming an interface no IDB described
BAD_TIMESTAMP = 5  # a timestamp outside the representable range
BYTES_SKIPPED = 6  # bytes passed over while resynchronising (not a record count)
NO_SECTION = 7  # pcapng blocks before any Section Header Block
CORRUPT_COMPRESSION = 8  # a gzip/xz/zstd stream that ends early or fails its checks
MALFORMED_JSON = 9  # a tshark JSON/EK packet object that does not parse
MISSING_FIELD = 10  # a tshark JSON/EK packet without the frame fields every row needs

COUNTER_SLOTS = 11

MESSAGES = {
    BAD_RECORD_LENGTH: "records with an impossible length",
    TRUNCATED_RECORD: "truncated record at end of input",
    UNSUPPORTED_LINKTYPE: "packets on an unsupported link type",
    BAD_BLOCK: "corrupt pcapng blocks",
    UNKNOWN_INTERFACE: "packets naming an undeclared interface",
    BAD_TIMESTAMP: "packets with an out-of-range timestamp",
    BYTES_SKIPPED: "bytes skipped while resynchronising",
    NO_SECTION: "blocks outside a pcapng section",
    CORRUPT_COMPRESSION: "compressed input truncated or corrupt (rest of file unreadable)",
    MALFORMED_JSON: "malformed JSON packet objects",
    MISSING_FIELD: "JSON packets without frame number, time, lengths or protocols",
}


def new_counters() -> np.ndarray:
    return np.zeros(COUNTER_SLOTS, dtype=np.int64)


def describe(counters: np.ndarray) -> dict[str, int]:
    """Non-zero counters by message, e.g. ``{"truncated record at end of input": 1}``."""
    return {MESSAGES[i]: int(c) for i, c in enumerate(counters) if c}
