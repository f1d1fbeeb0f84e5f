"""A fast BLAS for MLX's CPU backend on Linux.

MLX's Linux CPU wheel does its matrix products through the reference (netlib) BLAS: correct, and 10-30x
slower than an optimised one (time to first token of the embedded model: ~2 s against ~0.25 s). An OpenBLAS
with the standard `cblas_*` symbols already ships inside a wheel mlxd installs (opencv-python, pulled in by
mlx-vlm). Loading it with RTLD_GLOBAL before MLX is imported makes MLX's BLAS calls bind to it. Nothing
changes on macOS, where MLX uses Metal and Accelerate. `MLXD_BLAS=reference` turns this off.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path


def find_openblas() -> Path | None:
    """An OpenBLAS bundled in an installed wheel (`<package>.libs/libopenblas*.so*`), if any."""
    for entry in sys.path:
        matches = sorted(Path(entry or ".").glob("*.libs/libopenblas*.so*"))
        if matches:
            return matches[0]
    return None


def use_fast_blas() -> Path | None:
    """Load the bundled OpenBLAS globally; returns its path, or None where it does not apply."""
    if sys.platform != "linux" or os.environ.get("MLXD_BLAS") == "reference" or "mlx.core" in sys.modules:
        return None
    path = find_openblas()
    if path is None:
        return None
    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    return path


def openblas_in_use() -> bool:
    """Whether an OpenBLAS is loaded globally (by `use_fast_blas` or LD_PRELOAD), so MLX's products go to it."""
    return hasattr(ctypes.CDLL(None), "openblas_get_config")
