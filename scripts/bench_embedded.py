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

import mlx.core as mx
import mlx_lm
from mlx_lm.sample_utils import make_sampler

from mlxd import embedded

QUESTION = "What is the capital of France?"


def generate(folder: Path, runs: int, max_tokens: int) -> None:
    start = time.perf_counter()
    model, tokenizer = mlx_lm.load(str(folder))
    print(f"  load: {time.perf_counter() - start:.2f} s")
    messages = [{"role": "user", "content": QUESTION}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ttfts, rates = [], []
    for run in range(runs + 1):
        text, first = "", None
        start = time.perf_counter()
        for response in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=max_tokens,
                                               sampler=make_sampler(temp=0.0)):
            first = first if first is not None else time.perf_counter() - start
            text += response.text
        if run == 0:
            print(f"  answer ({response.generation_tokens} tokens, {response.finish_reason}): {text!r}")
            continue  # the first run warms up
        ttfts.append(first)
        rates.append(response.generation_tps)
    print(f"  prompt {len(prompt)} tokens; TTFT median {statistics.median(ttfts):.3f} s "
          f"(min {min(ttfts):.3f}); generation median {statistics.median(rates):.1f} tok/s over {runs} runs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default=embedded.DTYPE, help="comma-separated: float32,float16,bfloat16")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--cache-dir", type=Path, help="cache root to use (default: a fresh temporary one)")
    args = parser.parse_args()
    print(f"mlx {mx.__version__}, device {mx.default_device()}")

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
