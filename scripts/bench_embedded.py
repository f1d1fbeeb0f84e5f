"""Time the embedded model: cold conversion, warm load, and TTFT and tokens/s of plain mlx_lm.stream_generate.

    PYTHONPATH=. python scripts/bench_embedded.py [--dtypes float32,float16,bfloat16] [--runs 3]

It converts into a temporary cache (so "cold" is real) unless --cache-dir is given. Other dtypes than the
shipped one are converted with embedded.convert into their own temporary folders, for comparison only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlxd.engine.blas import use_fast_blas

BLAS = use_fast_blas()  # as `mlxd serve` does; MLXD_BLAS=reference measures MLX's own BLAS

import mlx.core as mx
import mlx_lm
from mlx_lm.sample_utils import make_sampler

from mlxd.engine import embedded

QUESTION = "What is the capital of France?"  # short answer: checks correctness and times the first token
STORY = "Write a short story about a robot who learns to paint."  # long answer: times decoding


def run(model, tokenizer, question: str, max_tokens: int) -> tuple[str, float, Any]:
    messages = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    text, first, response = "", None, None
    start = time.perf_counter()
    for response in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=max_tokens,
                                           sampler=make_sampler(temp=0.0)):
        first = first if first is not None else time.perf_counter() - start
        text += response.text
    return text, first, response


def generate(folder: Path, runs: int, max_tokens: int) -> None:
    start = time.perf_counter()
    model, tokenizer = mlx_lm.load(str(folder))
    print(f"  load: {time.perf_counter() - start:.2f} s")
    text, _, response = run(model, tokenizer, QUESTION, max_tokens)  # also warms up
    print(f"  answer ({response.prompt_tokens} prompt tokens, {response.generation_tokens} generated, "
          f"{response.finish_reason}): {text!r}")
    ttfts = [run(model, tokenizer, QUESTION, max_tokens)[1] for _ in range(runs)]
    rates = [run(model, tokenizer, STORY, max_tokens)[2].generation_tps for _ in range(runs)]
    print(f"  TTFT median {statistics.median(ttfts):.3f} s (min {min(ttfts):.3f}); "
          f"decoding median {statistics.median(rates):.1f} tok/s ({max_tokens} tokens), {runs} runs each")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default=embedded.DTYPE, help="comma-separated: float32,float16,bfloat16")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--cache-dir", type=Path, help="cache root to use (default: a fresh temporary one)")
    args = parser.parse_args()
    print(f"mlx {mx.__version__}, device {mx.default_device()}, BLAS {BLAS or 'mlx default'}")

    with tempfile.TemporaryDirectory(prefix="mlxd-bench-") as tmp:
        root = args.cache_dir or Path(tmp)
        start = time.perf_counter()
        folder = embedded.model_folder(root)
        print(f"model_folder, first call (converts unless cached): {time.perf_counter() - start:.2f} s")
        start = time.perf_counter()
        embedded.model_folder(root)
        print(f"model_folder, second call (reuse): {time.perf_counter() - start:.3f} s")
        for dtype in args.dtypes.split(","):
            print(f"{dtype}:")
            if dtype == embedded.DTYPE:
                generate(folder, args.runs, args.max_tokens)
                continue
            other = Path(tmp) / dtype
            other.mkdir()
            start = time.perf_counter()
            embedded.convert(embedded.find_gguf(), other, dtype=dtype)
            print(f"  conversion: {time.perf_counter() - start:.2f} s")
            generate(other, args.runs, args.max_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
