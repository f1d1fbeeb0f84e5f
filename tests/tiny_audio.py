"""A tiny random-weight Kokoro in mlx-audio's on-disk layout, and speech made at test time with flite.

Kokoro's decoder widths are fixed in mlx-audio (1024/512 channels), so even with a one-layer ALBERT the
model has ~56M parameters (~220 MB in float32): it is built in a temporary folder and never committed. Its
voice is noise; it proves loading, phonemes in, 24 kHz audio out and length growing with the text.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlxd.audio.pcm import SPEECH_RATE
from mlxd.audio.wav import read_wav

# StyleTTS 2's symbols, the alphabet Kokoro's vocabulary is drawn from
SYMBOLS = ("$;:,.!?¡¿—…\"«»“” ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
           "ɑɐɒæɓʙβɔɕçɗɖðʤəɘɚɛɜɝɞɟʄɡɠɢʛɦɧħɥʜɨɪʝɭɬɫɮʟɱɯɰŋɳɲɴøɵɸθœɶʘɹɺɾɻʀʁɽʂʃʈʧʉʊʋⱱʌɣɤʍχʎʏʑʐʒʔʡʕʢǀǁǂǃˈˌːˑʼʴʰʱʲʷˠˤ˞")
N_TOKEN = 178
KOKORO_CONFIG = {
    "model_type": "kokoro",
    "istftnet": {"upsample_kernel_sizes": [20, 12], "upsample_rates": [10, 6], "gen_istft_hop_size": 5,
                 "gen_istft_n_fft": 20, "resblock_dilation_sizes": [[1, 3, 5]],
                 "resblock_kernel_sizes": [3], "upsample_initial_channel": 512},
    "dim_in": 64, "dropout": 0.2, "hidden_dim": 512, "max_conv_dim": 512, "max_dur": 50, "multispeaker": True,
    "n_layer": 1, "n_mels": 80, "n_token": N_TOKEN, "style_dim": 128, "text_encoder_kernel_size": 5,
    "plbert": {"hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128,
               "max_position_embeddings": 512, "num_hidden_layers": 1, "dropout": 0.1},
    "sample_rate": 24000,
}


def build_kokoro(folder: Path, voice: str = "af_heart") -> Path:
    """Write config.json, model.safetensors and voices/<voice>.safetensors; mlx-audio's loader takes it."""
    from mlx_audio.tts.models.kokoro import Model, ModelConfig

    folder.mkdir(parents=True, exist_ok=True)
    config = {**KOKORO_CONFIG, "vocab": {s: i for i, s in enumerate(SYMBOLS[:N_TOKEN]) if i}}
    model = Model(ModelConfig.from_dict(config))
    # One frame per phoneme: random durations (~25 frames each) make MLX's CPU convolutions take minutes.
    projection = model.predictor.duration_proj.linear_layer
    projection.weight = mx.zeros_like(projection.weight)
    projection.bias = mx.full(projection.bias.shape, -10.0)
    weights = dict(tree_flatten(model.parameters()))
    for key, value in weights.items():  # store convolutions as the real checkpoints do, where sanitize flips them
        seen = model.sanitize({key: value}).get(key)
        if value.ndim == 3 and seen is not None and seen.shape != value.shape:
            weights[key] = value.transpose(0, 2, 1)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))
    (folder / "voices").mkdir(exist_ok=True)
    style = mx.random.normal((510, 1, 256)) * 0.1  # one style vector per phoneme count, as Kokoro's packs
    mx.save_safetensors(str(folder / "voices" / f"{voice}.safetensors"), {"voice": style})
    return folder


def flite_speech(text: str, folder: Path) -> np.ndarray:
    """`text` spoken by flite's slt voice: float32 mono at 16 kHz."""
    path = folder / "speech.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True, timeout=30)
    samples, rate = read_wav(path.read_bytes())
    assert rate == SPEECH_RATE
    return samples
