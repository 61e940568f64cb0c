"""QDC metrics at scale: Vendi through the d x d covariance, and the metrics pass's memory.

Prints, in one run (JSON):
  1. Vendi (q = 0.5, 1, 2) of 100,000 x 384 float32 embeddings through
     ``VendiAccumulator`` (target < 2 s on 2 cores);
  2. at n = 5,000: the d x d route against the n x n route (the vendi-score package's
     ``score_K`` on K = X X^T), their speed ratio and that the values are equal;
  3. peak RSS (sampled every 20 ms, and its growth over the RSS before the pass) of the full metrics pass (``tasks.metrics.compute_metrics``: DuckDB stream,
     embeddings, Vendi, distinct-n, gzip, MinHash near-duplicates, strategies) over a
     synthetic run of 10k and of 200k chains, each measured in a fresh subprocess (target:
     flat). The pass uses the ``hashed`` embedder by default: MiniLM on 2 CPU cores embeds
     ~180 chains/s, which makes 200k chains a 20-minute bench; its memory per batch is fixed
     either way (``--embedder minilm`` to measure it anyway).

    python bench/vendi_bench.py [--sizes 10000,200000] [--embedder hashed]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.env import apply_offline_env  # noqa: E402

apply_offline_env()

import numpy as np  # noqa: E402


def vendi_timing() -> dict:
    from tasks.metrics import QS, VendiAccumulator, vendi_from_eigenvalues

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100_000, 384)).astype(np.float32)
    t = time.perf_counter()
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    acc = VendiAccumulator(384)
    for k in range(0, len(X), 16384):
        acc.add(X[k : k + 16384], normalised=True)
    w = acc.eigenvalues()
    scores = {f"q{q:g}": round(vendi_from_eigenvalues(w, q), 3) for q in QS}
    dxd_100k = time.perf_counter() - t

    from vendi_score.vendi import score_K

    Y = X[:5000].astype(np.float64)
    t = time.perf_counter()
    a = VendiAccumulator(384)
    a.add(Y, normalised=True)
    d_val = a.score(1.0)
    dxd_5k = time.perf_counter() - t
    t = time.perf_counter()
    n_val = float(score_K(Y @ Y.T, q=1))
    nxn_5k = time.perf_counter() - t
    return {
        "vendi_100k_x_384_s": round(dxd_100k, 3), "vendi_100k_target_s": 2.0, "vendi_100k_scores": scores,
        "n5000_dxd_s": round(dxd_5k, 4), "n5000_nxn_s": round(nxn_5k, 3), "n5000_speedup": round(nxn_5k / dxd_5k, 1),
        "n5000_values": [round(d_val, 6), round(n_val, 6)], "n5000_equal_rel_1e-6": abs(d_val - n_val) <= 1e-6 * n_val,
    }


def make_run(root: Path, n_chains: int) -> None:
    """A synthetic run: ~4 chains per problem, template texts with varied numbers and verbs."""
    from infra.schemas import from_rows
    from infra.storage import RunStore

    store = RunStore(root, "bench")
    rng = np.random.default_rng(1)
    verbs = ["buys", "finds", "gets", "is given", "picks", "wins"]
    n_problems = n_chains // 4
    store.write("problems", "seeds", "00000", from_rows(
        [{"run_id": "bench", "problem_id": f"p{p:07d}", "n_ops": int(p % 4) + 2} for p in range(n_problems)], "problems"))
    shard = 10_000
    for s in range(0, n_chains, shard):
        rows = []
        for i in range(s, min(s + shard, n_chains)):
            p = i // 4
            a, b, c = (int(x) for x in rng.integers(1, 99, size=3))
            steps = [f"She has {a} and {verbs[(p + i) % 6]} {b}, so {a}+{b}={a + b}.",
                     f"Then she loses {c}, so {a + b}-{c}={a + b - c}.", f"#### {a + b - c}"]
            rows.append({"run_id": "bench", "chain_id": f"c{i:08d}", "problem_id": f"p{p:07d}", "stage": "generation",
                         "steps": steps, "step_scores": [1.0, 1.0, 1.0], "n_steps": 3, "text": "\n\n".join(steps),
                         "correct": bool(i % 3), "verdict": "correct" if i % 3 else "wrong", "completion_tokens": 40})
        store.write("chains", "generation", f"{s // shard:05d}", from_rows(rows, "chains"))


CHILD = """
import json, os, resource, sys, threading, time
sys.path.insert(0, {root!r})
from infra.env import apply_offline_env; apply_offline_env()
from infra.config import RunConfig
from infra.storage import RunStore
from infra.embed import get_embedder
from tasks.metrics import compute_metrics
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page / 2**20
cfg = RunConfig.model_validate({{"metrics": {{"embedder": {embedder!r}}}}})
emb = get_embedder({embedder!r})
emb.encode(["warm up the embedder"])
import duckdb, datasketch, tasks.sft, tasks.scorers  # the pass's lazy imports, so they do not count as its growth
before, peak, stop = rss(), [0.0], threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.02)
th = threading.Thread(target=sample, daemon=True); th.start()
t = time.perf_counter()
m = compute_metrics(RunStore.at({run_dir!r}), cfg.metrics, cfg.dedup, emb)
seconds = time.perf_counter() - t
stop.set(); th.join()
print(json.dumps({{"seconds": seconds, "rows": m.num_rows, "rss_before_mb": before, "peak_rss_mb": max(peak[0], rss())}}))
"""


def metrics_memory(sizes: list[int], embedder: str) -> dict:
    out = {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as d:
            make_run(Path(d), n)
            code = CHILD.format(root=str(ROOT), embedder=embedder, run_dir=str(Path(d) / "runs" / "bench"))
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
            if res.returncode:
                raise SystemExit(f"metrics pass over {n} chains failed:\n{res.stderr[-3000:]}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
            out[f"{n}_chains"] = {"rss_before_pass_mb": round(r["rss_before_mb"], 1), "peak_rss_mb": round(r["peak_rss_mb"], 1),
                                  "pass_growth_mb": round(r["peak_rss_mb"] - r["rss_before_mb"], 1), "seconds": round(r["seconds"], 1)}
    peaks = [v["peak_rss_mb"] for v in out.values()]
    out["peak_rss_ratio_largest_over_smallest"] = round(peaks[-1] / peaks[0], 3)
    out["embedder"] = embedder
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,200000")
    ap.add_argument("--embedder", default="hashed")
    args = ap.parse_args()
    result = {"cpu_count": os.cpu_count(), **vendi_timing()}
    result["metrics_pass"] = metrics_memory([int(s) for s in args.sizes.split(",")], args.embedder)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
