"""One decode step of a text model on MLX's CPU backend: mlx-lm's layers, then mlxd's attention
(mlxd/engine/cpu_attention.py), then that and mlxd's transposed weights (mlxd/engine/cpu_weights.py), in
interleaved rounds in one process:

    python scripts/bench_cpu_step.py --model smollm2-135m --batch 8 --context 250

Prints the median and best milliseconds per step of each, their ratios to mlx-lm's, and whether the step's
logits are bit-identical to mlx-lm's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlxd.engine.blas import use_fast_blas

BLAS = use_fast_blas()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=250, help="tokens already in every row's KV cache")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5, help="steps timed per round")
    args = parser.parse_args()

    import mlx.core as mx
    import mlx_lm
    from mlx_lm.models import base
    from mlx_lm.models.cache import BatchKVCache

    from mlxd.engine import cpu_attention, cpu_weights
    from mlxd.engine.model_choice import resolve
    from mlxd.engine.models import local_path

    path = str(local_path(resolve(args.model)))
    plain, _ = mlx_lm.load(path)
    transposed, _ = mlx_lm.load(path)
    cpu_weights.install(transposed)
    module = sys.modules[type(plain).__module__]  # both models' attention layers look the function up here
    variants = {"mlx-lm": (plain, base.scaled_dot_product_attention),
                "attention": (plain, cpu_attention.attention),
                "attention+weights": (transposed, cpu_attention.attention)}
    caches = {}
    for model in (plain, transposed):
        caches[id(model)] = [BatchKVCache([0] * args.batch) for _ in model.layers]
        mx.eval(model(mx.zeros((args.batch, args.context), dtype=mx.int32), cache=caches[id(model)]))
    token = mx.zeros((args.batch, 1), dtype=mx.int32)

    def step(model) -> mx.array:
        logits = model(token, cache=caches[id(model)])
        mx.eval(logits)
        for layer in caches[id(model)]:
            layer.trim(1)  # every step decodes at the same context length
        return logits

    times: dict[str, list[float]] = {name: [] for name in variants}
    logits = {}
    for _ in range(args.rounds):
        for name, (model, attention) in variants.items():
            module.scaled_dot_product_attention = attention
            logits[name] = step(model)
            started = time.perf_counter()
            for _ in range(args.steps):
                step(model)
            times[name].append(1000 * (time.perf_counter() - started) / args.steps)
    print(f"{args.model}, {args.batch} rows, {args.context} tokens of context, BLAS: {BLAS or 'reference'}")
    baseline = statistics.median(times["mlx-lm"])
    for name, values in times.items():
        identical = mx.array_equal(logits[name], logits["mlx-lm"]).item()
        print(f"  {name:>17}: median {statistics.median(values):7.1f} ms/step, best {min(values):7.1f}, "
              f"{statistics.median(values) / baseline:.2f} of mlx-lm's; logits bit-identical: {identical}")


if __name__ == "__main__":
    main()
