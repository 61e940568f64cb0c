"""GPU: tokens/s of the pruned search through the Ray actor pool vs bare vLLM, same requests.

On a GPU host with vLLM installed (the gpu-worker environment) and a model on disk:

    python bench/gpu_vllm.py --model /models/Qwen2.5-0.5B-Instruct --n 200 [--tp 1]

1. factory: the pruned step search (tasks.generation.self_generate, arithmetic scorer) over
   ``--n`` built-in problems, sending every depth's batch through ``EnginePool`` (one Ray
   actor holding a ``vllm.LLM``, prefix caching on). Every batch of requests it sends is
   recorded. Throughput = sampled tokens / wall time of the whole search (search logic,
   scoring, Ray transport included).
2. bare: the same recorded batches, in the same order, sent straight to a ``vllm.LLM`` built
   in this process with the same engine arguments; throughput = the same tokens / wall time
   of the generate calls alone.

Prints JSON with both throughputs and their ratio (target >= 0.95). The pool is closed
before the bare engine starts, so each side has the whole GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.env import apply_offline_env  # noqa: E402

apply_offline_env()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--candidates", type=int, default=5)
    ap.add_argument("--max-step-tokens", type=int, default=96)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    args = ap.parse_args()

    import ray

    from infra.backends.vllm import VLLMGenerator, engine_kwargs
    from infra.config import PoolConfig, RunConfig, VLLMBackend
    from infra.pool import EnginePool
    from infra.prompts import load_template
    from tasks.generation import STAGE_SECTIONS, self_generate
    from tasks.scorers import build_scorer
    from tasks.seeds import load_seeds

    backend = VLLMBackend(model=args.model, tensor_parallel_size=args.tp, gpu_memory_utilization=args.gpu_memory_utilization,
                          chat_template=False, enable_prefix_caching=True)
    cfg = RunConfig.model_validate({"seeds": {"kind": "builtin", "n": args.n, "min_steps": 2, "max_steps": 5},
                                    "search": {"candidates": args.candidates, "max_step_tokens": args.max_step_tokens,
                                               "max_depth": 8},
                                    "policy": backend.model_dump(), "pool": {"actors": 1, "num_cpus": 2}})
    problems, _ = load_seeds(cfg.seeds, "bench")
    template = load_template(cfg.generation.prompt_template)

    ray.init(include_dashboard=False, log_to_driver=False)
    t = time.perf_counter()
    pool = EnginePool(backend, PoolConfig(actors=1, num_cpus=2, startup_timeout_s=900))
    startup_s = time.perf_counter() - t
    batches: list = []
    sampled = [0]

    def recorded(requests):
        batches.append(list(requests))
        out = pool.generate(requests)
        sampled[0] += sum(c.completion_tokens for r in out for c in r.completions)
        return out

    t = time.perf_counter()
    chains = self_generate(problems, recorded, build_scorer(cfg.scorer, recorded, cfg.search, cfg.seed), cfg, run_id="bench",
                           model=pool.model_name, template=template, config_hash=cfg.stage_hash(*STAGE_SECTIONS))
    factory_s = time.perf_counter() - t
    tokens = sampled[0]
    assert chains.num_rows == 2 * args.n
    pool.close()
    ray.shutdown()

    bare = VLLMGenerator(backend)
    bare_tokens = 0
    t = time.perf_counter()
    for b in batches:
        bare_tokens += sum(c.completion_tokens for r in bare.generate(b) for c in r.completions)
    bare_s = time.perf_counter() - t
    import torch

    result = {
        "device": torch.cuda.get_device_name(0),
        "model": args.model,
        "problems": args.n,
        "batches": len(batches),
        "requests": sum(len(b) for b in batches),
        "engine_startup_s": round(startup_s, 1),
        "factory_tokens": tokens,
        "factory_s": round(factory_s, 2),
        "factory_tok_per_s": round(tokens / factory_s, 1),
        "bare_tokens": bare_tokens,
        "bare_s": round(bare_s, 2),
        "bare_tok_per_s": round(bare_tokens / bare_s, 1),
        "ratio": round((tokens / factory_s) / (bare_tokens / bare_s), 3),
        "target": 0.95,
        "engine_kwargs": engine_kwargs(backend),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
