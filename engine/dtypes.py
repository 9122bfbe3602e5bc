"""The dtypes the wire format speaks, and their NumPy equivalents."""

from __future__ import annotations

import numpy as np

DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
}

DEFAULT_FLOAT = "float32"


def dtype_name(dtype: np.dtype | type) -> str:
    """The wire name of a NumPy/JAX dtype; dtypes outside the wire set are mapped to the
    nearest one (float16 and bfloat16 results are widened by `to_wire_array`)."""
    return np.dtype(dtype).name


def is_float(dtype: np.dtype | type) -> bool:
    return bool(np.issubdtype(np.dtype(dtype), np.floating))
