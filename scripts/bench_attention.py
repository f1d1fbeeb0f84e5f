"""One decode step of a text model on MLX's CPU backend, with mx.fast's attention and with mlxd's
(mlxd/engine/cpu_attention.py), in interleaved rounds in one process:

    python scripts/bench_attention.py --model smollm2-135m --batch 8 --context 250

Prints the median and best milliseconds per step of each, their ratio, and whether the step's logits are
bit-identical.
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

    from mlxd.engine import cpu_attention
    from mlxd.engine.model_choice import resolve
    from mlxd.engine.models import local_path

    model, _ = mlx_lm.load(str(local_path(resolve(args.model))))
    module = sys.modules[type(model).__module__]
    cache = [BatchKVCache([0] * args.batch) for _ in model.layers]
    mx.eval(model(mx.zeros((args.batch, args.context), dtype=mx.int32), cache=cache))
    token = mx.zeros((args.batch, 1), dtype=mx.int32)

    def step() -> mx.array:
        logits = model(token, cache=cache)
        mx.eval(logits)
        for layer in cache:
            layer.trim(1)  # every step decodes at the same context length
        return logits

    variants = {"mx.fast": base.scaled_dot_product_attention, "mlxd": cpu_attention.attention}
    times: dict[str, list[float]] = {name: [] for name in variants}
    logits = {}
    for _ in range(args.rounds):
        for name, attention in variants.items():
            module.scaled_dot_product_attention = attention
            logits[name] = step()
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append(1000 * (time.perf_counter() - started) / args.steps)
    print(f"{args.model}, {args.batch} rows, {args.context} tokens of context, BLAS: {BLAS or 'reference'}")
    for name, values in times.items():
        print(f"  {name:>8}: median {statistics.median(values):7.1f} ms/step, best {min(values):7.1f}")
    ratio = statistics.median(times["mlxd"]) / statistics.median(times["mx.fast"])
    print(f"  mlxd / mx.fast: {ratio:.2f}; logits bit-identical: {mx.array_equal(*logits.values()).item()}")


if __name__ == "__main__":
    main()
