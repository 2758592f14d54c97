"""Arrow arrays from numpy and Python values and back, over their buffers.

pyarrow imports pandas the first time it converts a Python or numpy object
(``pa.array``, ``pa.scalar``, a Python number given to a compute function, ``to_numpy``
of an array with nulls): 0.15-0.3 s of a process, holding the interpreter, and more
objects for every later full garbage collection. The ingest and feature paths convert
here instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def numeric(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """A primitive array over a numpy array's memory (copied if strided); null where
    ``valid`` (bool per row, if given) is false."""
    values = np.ascontiguousarray(values)
    bitmap = None if valid is None or valid.all() else _bits(valid)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values),
                                 [bitmap, pa.py_buffer(values)])


def boolean(values: np.ndarray) -> pa.BooleanArray:
    """A boolean array (no nulls) from a numpy bool array."""
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, _bits(values)])


def strings(values: Sequence[str]) -> pa.StringArray:
    """A string array (no nulls) of Python strings."""
    data = [v.encode() for v in values]
    offsets = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.StringArray.from_buffers(len(data), pa.py_buffer(offsets),
                                       pa.py_buffer(b"".join(data)))


def empty(schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` with no rows (``schema.empty_table()`` converts)."""
    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def values(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A primitive array's values as numpy (under nulls: arbitrary): a view of one chunk,
    a copy of several."""
    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks == 1:
            return values(array.chunk(0))
        parts = [values(chunk) for chunk in array.chunks]
        return np.concatenate(parts) if parts else \
            np.zeros(0, np.dtype(array.type.to_pandas_dtype()))
    dtype = np.dtype(array.type.to_pandas_dtype())
    return np.frombuffer(array.buffers()[1], dtype, count=array.offset + len(array))[
        array.offset:]


def valid(array: pa.Array) -> np.ndarray | None:
    """Per row, whether it is set (None: no nulls)."""
    if array.null_count == 0:
        return None
    first, n = array.offset, len(array)
    bits = np.frombuffer(array.buffers()[0], np.uint8)[first // 8:(first + n + 7) // 8]
    return np.unpackbits(bits, bitorder="little")[first % 8:first % 8 + n].astype(bool)


def _bits(values: np.ndarray) -> pa.Buffer:
    return pa.py_buffer(np.packbits(values, bitorder="little"))
