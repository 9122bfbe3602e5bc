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


_NAMES = {dt: name for name, dt in DTYPES.items()}


def dtype_name(dtype: np.dtype) -> str:
    """The wire name of a dtype (a dict lookup: `np.dtype.name` is slow on a hot path)."""
    found = _NAMES.get(dtype)
    return found if found is not None else np.dtype(dtype).name


def is_float(dtype: np.dtype | type) -> bool:
    return np.dtype(dtype).kind == "f"
