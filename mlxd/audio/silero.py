"""Silero VAD from the `silero-vad` PyPI package, converted once into mlx-audio's `silero_vad` layout.

The package ships the 16 kHz branch as PyTorch-layout safetensors (its declared dependencies pull torch,
so it is installed with --no-deps and never imported). The conversion transposes the convolutions to MLX's
(out, kernel, in) order and folds the LSTM cell's two biases into one, then mlx-audio's own loader loads it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mlxd.audio.models import VAD_WINDOW, VadState
from mlxd.audio.worker import ThreadGuard
from mlxd.model_cache import converted_folder, default_cache_root, package_file

SHORT_NAME = "silero-vad-16k"
PACKAGE = "silero_vad"
WEIGHTS = "data/silero_vad_16k.safetensors"
PIP_COMMAND = "pip install --no-deps silero-vad==6.2.3"
CONVERTER_VERSION = 1
MARKER = "mlxd-converted.json"
BRANCH = "vad_16k"
WINDOW, CONTEXT = VAD_WINDOW, 64  # samples per probability, and the previous window's samples it sees
LSTM = "lstm_cell"


def find_weights() -> Path:
    path = package_file(PACKAGE, WEIGHTS)
    if path is None:
        raise FileNotFoundError(f"Silero VAD needs {WEIGHTS} from the silero-vad package; install it with: "
                                f"{PIP_COMMAND}")
    return path


def model_folder(cache_root: Path | None = None) -> Path:
    """The converted folder (config.json + model.safetensors), converting it first if needed."""
    source = find_weights()
    digest = hashlib.sha256(f"{CONVERTER_VERSION}:".encode() + source.read_bytes()).hexdigest()[:16]
    final = (cache_root or default_cache_root()) / "models" / f"{SHORT_NAME}-{digest}"
    return converted_folder(final, lambda dest: convert(source, dest), MARKER, "Silero VAD")


def convert(source: Path, dest: Path) -> None:
    """Write mlx-audio's silero_vad folder for the package's PyTorch-layout 16 kHz weights into `dest`."""
    from safetensors.numpy import load_file, save_file

    torch_weights = load_file(str(source))
    weights: dict[str, np.ndarray] = {}
    for key, value in torch_weights.items():
        if key.startswith(LSTM):
            continue
        if key.endswith(".weight") and value.ndim == 3:  # Conv1d: (out, in, kernel) -> (out, kernel, in)
            value = value.transpose(0, 2, 1)
        weights[f"{BRANCH}.{key}"] = np.ascontiguousarray(value)
    weights[f"{BRANCH}.lstm.Wx"] = torch_weights[f"{LSTM}.weight_ih"]
    weights[f"{BRANCH}.lstm.Wh"] = torch_weights[f"{LSTM}.weight_hh"]
    weights[f"{BRANCH}.lstm.bias"] = torch_weights[f"{LSTM}.bias_ih"] + torch_weights[f"{LSTM}.bias_hh"]
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "mlx"})
    (dest / "config.json").write_text(json.dumps({"model_type": "silero_vad", "architecture": "silero_vad",
                                                  "dtype": "float32"}, indent=2) + "\n")
    (dest / MARKER).write_text(json.dumps({"source": str(source), "converter_version": CONVERTER_VERSION}) + "\n")


class SileroVad:
    """Streaming speech probabilities, one per 512-sample window; the caller keeps the state between calls."""

    window = WINDOW

    def __init__(self, folder: Path) -> None:
        from mlx_audio.vad import load

        self.guard = ThreadGuard()
        self.model = load(folder, strict=False)  # the package has no 8 kHz branch: that one stays unused

    def initial_state(self) -> VadState:
        return None, np.zeros((1, CONTEXT), dtype=np.float32)

    def probabilities(self, windows: np.ndarray, state: VadState) -> tuple[np.ndarray, VadState]:
        """Probabilities of `windows` (a whole number of them) after `state`; the new state, as numpy."""
        import mlx.core as mx

        self.guard.check()
        lstm, context = state
        audio = np.concatenate([context, windows.reshape(1, -1)], axis=-1)
        hidden = None if lstm is None else mx.array(lstm)
        out = []
        for start in range(CONTEXT, audio.shape[-1], WINDOW):
            probability, hidden = self.model(mx.array(audio[:, start - CONTEXT:start + WINDOW]), state=hidden)
            out.append(probability)
        probabilities = mx.concatenate(out, axis=1)[0]
        mx.eval(probabilities, hidden)
        return np.array(probabilities), (np.array(hidden), audio[:, -CONTEXT:].copy())


def load(cache_root: Path | None = None) -> SileroVad:
    return SileroVad(model_folder(cache_root))
