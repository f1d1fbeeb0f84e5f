"""The bundled OpenBLAS gives MLX the same products, faster."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlxd.engine.blas import find_openblas

PROBE = """
import numpy as np
from mlxd.engine.blas import use_fast_blas
path = use_fast_blas()
import mlx.core as mx
a = np.random.default_rng(0).standard_normal((64, 96), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((96, 32), dtype=np.float32)
product = np.array(mx.matmul(mx.array(a), mx.array(b)))
print(path, float(np.abs(product - a @ b).max()))
"""


@pytest.mark.skipif(sys.platform != "linux" or find_openblas() is None, reason="Linux wheels with an OpenBLAS")
@pytest.mark.parametrize("mode", ["", "reference"])
def test_products_agree_with_numpy_with_and_without_it(mode):
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                            env={"MLXD_BLAS": mode, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    path, error = result.stdout.split()
    assert (path == "None") == (mode == "reference")
    assert float(error) < 1e-3
