"""Orchestration overhead: factory wall time / the same requests sent straight to the backend.

Both sides, in one process and one run:
  factory   sphere_run (Prefect flow + subflows, shard tasks, one Ray actor holding the
            tiny backend, GX validation, atomic Parquet, catalog refresh, artifacts)
  baseline  a hand-rolled loop: the same pruned search over the same shards, calling an
            in-process tiny backend directly (no Prefect, no Ray, no storage, no checks)

The tiny backend is reproducible, so both sides issue exactly the same requests in the
same batches and produce the same chains (checked). Both use one model thread. The
Prefect API is warmed first (a deployment talks to a running server); the factory side
includes Ray start-up and the actor's model load. Budget (DESIGN.md): ratio <= 1.10.

    python bench/overhead.py [--n 200] [--shard-size 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.env import apply_offline_env  # noqa: E402

apply_offline_env()


def baseline(cfg, run_id: str, shard_size: int) -> tuple[float, list]:
    import torch

    from flows.stages import get
    from infra.backends import build_backend
    from tasks.engine import Engine
    from tasks.generation import self_generate
    from tasks.scorers import build_scorer
    from tasks.seeds import load_seeds

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    backend = build_backend(cfg.policy)
    problems, _ = load_seeds(cfg.seeds, run_id)
    engine = Engine(backend.generate, build_scorer(cfg.scorer, backend.generate, cfg.search, cfg.seed), cfg.search, cfg.seed,
                    cfg.scorer.unknown_score, backend.model_name, run_id, get("generation").config_hash(cfg))
    texts = []
    for start in range(0, problems.num_rows, shard_size):
        chains = self_generate(problems.slice(start, shard_size), cfg.generation, engine)["chains"]
        texts += chains.column("text").to_pylist()
    return time.perf_counter() - t0, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=2, help="model shards in flight on the factory side (one model "
                    "thread either way: one actor, one torch thread; a second shard commits while the other generates)")
    args = ap.parse_args()

    from prefect import flow

    from flows.pipeline import sphere_run
    from infra.config import load_config
    from infra.storage import RunStore

    overrides = {"seeds.n": args.n, "generation.shard_size": args.shard_size, "generation.concurrency": args.concurrency,
                 "pool.actors": 1, "policy.threads": 1,
                 # the baseline is self-generation only; routing and SFT stay on (they are factory work)
                 "self_correction.enabled": False, "diversity.enabled": False,
                 # QDC metrics (sentence embeddings, report) are measured on their own in bench/vendi_bench.py
                 "metrics.enabled": False}
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", overrides)

    @flow
    def warm() -> int:
        return 1

    t = time.perf_counter()
    warm()
    prefect_boot = time.perf_counter() - t

    base_s, base_texts = baseline(cfg, "bench", args.shard_size)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        summary = sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="bench", data_root=d, overrides=overrides)
        factory_s = time.perf_counter() - t
        chains = RunStore(Path(d), "bench").read_table("chains")
        same = sorted(chains.column("text").to_pylist()) == sorted(base_texts)
    result = {
        "problems": args.n,
        "chains": summary["counts"]["chains"],
        "baseline_s": round(base_s, 2),
        "factory_s": round(factory_s, 2),
        "ratio": round(factory_s / base_s, 3),
        "budget": 1.10,
        "same_chains": same,
        "prefect_api_boot_s (excluded)": round(prefect_boot, 2),
    }
    print(json.dumps(result, indent=2))
    if not same:
        sys.exit("factory and baseline produced different chains: the comparison is void")


if __name__ == "__main__":
    main()
