"""netsift.arrays: Arrow arrays over numpy buffers equal what pyarrow's conversions give."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from netsift import arrays


def test_values_and_validity_of_sliced_arrays_with_nulls():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 1 << 16, 1000).astype(np.uint16)
    mask = rng.random(1000) < 0.3
    mask[[13, 995]] = True
    full = pa.array(data, mask=mask)
    for array in (full, full.slice(13, 501), full.slice(995)):
        valid = arrays.valid(array)
        assert valid is not None and valid.tolist() == array.is_valid().to_pylist()
        got = arrays.values(array)[valid]
        assert got.tolist() == [v for v in array.to_pylist() if v is not None]
    assert arrays.valid(pa.array(data).slice(7)) is None
    chunked = pa.chunked_array([full.slice(0, 10), full.slice(10, 5)])
    assert arrays.values(chunked).tolist() == data[:15].tolist()


def test_arrays_built_over_buffers_equal_pyarrows():
    order = np.array([3, 1, 2], np.int64)
    assert arrays.numeric(order).equals(pa.array(order))
    assert arrays.numeric(np.arange(10)[::3]).equals(pa.array([0, 3, 6, 9]))
    keep = np.array([True, False, True, True, False, False, True, False, True])
    assert arrays.boolean(keep).equals(pa.array(keep))
    assert arrays.strings(["", "capture.pcap", "é"]).equals(pa.array(["", "capture.pcap", "é"]))
    schema = pa.schema([pa.field("node", pa.binary(16), nullable=False), ("n", pa.int64())])
    assert arrays.empty(schema).equals(schema.empty_table())


def test_numeric_arrays_with_nulls_equal_pyarrows():
    values = np.arange(11, dtype=np.uint64)
    valid = np.array([True, False] * 5 + [True])
    assert arrays.numeric(values, valid).equals(pa.array(values, mask=~valid))
    assert arrays.numeric(values, np.ones(11, np.bool_)).null_count == 0
