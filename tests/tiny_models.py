"""Tiny random-weight models in the real on-disk layout, loadable by `mlx_lm.load` and `mlx_vlm.load`.

No model can be downloaded here, so tests build their own: a llama text model with a ChatML template and a
Gemma 3 vision-language model with its image processor. Their output is gibberish; they prove plumbing,
streaming, timing and limits. Building both takes about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is in this picture? A cat sitting on a red chair near the window.",
    "Describe the scene: people walking in a park, trees, a blue sky and clouds.",
    "Hello, how are you today? I am fine, thank you. Tell me a story about a robot.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ! ? : ; - ( ) [ ] { } \" '",
] * 20

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _train_tokenizer(specials: list[str], vocab_size: int = 512) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def _save_weights(model, folder: Path) -> None:
    mx.eval(model.parameters())
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})


def build_text_model(folder: Path, chat_template: str = CHATML_TEMPLATE) -> Path:
    """A 2-layer llama with a ChatML template whose end-of-turn token stops generation."""
    from mlx_lm.models import llama

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = _train_tokenizer(specials)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template,
    )
    wrapped.save_pretrained(str(folder))
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": tokenizer.get_vocab_size(),
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "eos_token_id": tokenizer.token_to_id("<|im_end|>"),
        "bos_token_id": tokenizer.token_to_id("<|endoftext|>"),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    mx.random.seed(0)
    _save_weights(llama.Model(llama.ModelArgs.from_dict(config)), folder)
    return folder


def build_vision_model(folder: Path) -> Path:
    """A 2-layer Gemma 3 with a 1-layer SigLIP tower, 32x32 images and 4 tokens per image."""
    from mlx_vlm.models import gemma3

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>",
                "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tokenizer = _train_tokenizer(specials)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        chat_template=GEMMA_TEMPLATE,
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"},
    )
    wrapped.save_pretrained(str(folder))
    ids = {name: tokenizer.token_to_id(name) for name in specials}
    preprocessor = {
        "image_processor_type": "Gemma3ImageProcessor",
        "processor_class": "Gemma3Processor",
        "do_resize": True,
        "size": {"height": 32, "width": 32},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
        "do_pan_and_scan": False,
        "resample": 2,
        "image_seq_length": 4,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (folder / "processor_config.json").write_text(
        json.dumps({"processor_class": "Gemma3Processor", "image_seq_length": 4}))
    vocab_size = tokenizer.get_vocab_size()
    text_config = {
        "model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 16,
        "sliding_window": 64, "sliding_window_pattern": 2, "mm_tokens_per_image": 4, "vocab_size": vocab_size,
    }
    vision_config = {
        "model_type": "siglip_vision_model", "hidden_size": 32, "num_hidden_layers": 1,
        "intermediate_size": 64, "num_attention_heads": 2, "patch_size": 8, "image_size": 32,
    }
    config = {
        "model_type": "gemma3",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "image_token_index": ids["<image_soft_token>"],
        "boi_token_index": ids["<start_of_image>"],
        "eoi_token_index": ids["<end_of_image>"],
        "pad_token_id": ids["<pad>"],
        "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
        "mm_tokens_per_image": 4,
        "text_config": text_config,
        "vision_config": vision_config,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    model_config = gemma3.ModelConfig.from_dict(config)
    model_config.text_config = gemma3.TextConfig.from_dict(text_config)
    model_config.vision_config = gemma3.VisionConfig.from_dict(vision_config)
    mx.random.seed(0)
    _save_weights(gemma3.Model(model_config), folder)
    return folder
