"""Streaming vs the stage barrier, in one run: the whole pipeline on the same config in both
scheduling modes, each in a fresh process (its own Ray and Prefect), with the rows checked identical.

Prints per mode: wall time, pools built, engine loads (actors started), and the share of
wall time during which at least one engine is busy (whole run, and from the first engine
call to the last). The ratio is streaming / barrier wall time. Targets (issue 12): ratio
<= 0.85, or, where the 2 cores are the limit, a busy share >= 0.9 in streaming mode; one
pool per distinct backend config.

    python bench/streaming.py [--config configs/builtin-1k.yaml] [--set k=v ...]
    python bench/streaming.py --config configs/smollm2.yaml --set seeds.n=8   # an engine with a real load time
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from infra.env import apply_offline_env
apply_offline_env()
from prefect import flow
from flows.pipeline import sphere_run
from infra.storage import RunStore

@flow
def warm():
    return 1
warm()  # the Prefect API is up before the clock starts (a deployment talks to a running server)
t = time.perf_counter()
summary = sphere_run(config_path={config!r}, run_id="bench", data_root={root_dir!r}, overrides={overrides!r})
wall = time.perf_counter() - t
store = RunStore.open({root_dir!r}, "bench")
rows = {{t: sorted(tuple(str(r[k]) for k in keys) for r in store.read_table(t).to_pylist())
        for t, keys in (("chains", ("chain_id", "text", "verdict")), ("pairs", ("pair_id",)), ("sft", ("sft_id",)))}}
print("RESULT " + json.dumps({{"wall_s": wall, "summary": summary, "rows": rows}}, default=str))
"""


def run_mode(config: str, overrides: dict, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        code = CHILD.format(root=str(ROOT), config=config, root_dir=d, overrides={**overrides, "scheduling": mode})
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def _value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "builtin-1k.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="k=v config override (repeatable)")
    ap.add_argument("--no-compare", action="store_true", help="report, do not require, identical rows (a backend that is "
                    "not reproducible, e.g. llama.cpp with parallel slots)")
    args = ap.parse_args()
    overrides = {"metrics.enabled": False}  # QDC metrics are the same work in both modes (bench/vendi_bench.py measures them)
    overrides.update({k: _value(v) for k, v in (s.split("=", 1) for s in args.sets)})
    t = time.time()
    res = {mode: run_mode(args.config, overrides, mode) for mode in ("barrier", "streaming")}
    b, s = res["barrier"], res["streaming"]
    same = b["rows"] == s["rows"]
    table = {mode: {"wall_s": round(r["wall_s"], 2), "pool_builds": r["summary"]["pool_builds"],
                    "engine_loads": r["summary"]["engine_loads"], "busy_share": r["summary"]["engine_busy_share"],
                    "busy_share_model_span": r["summary"]["engine_busy_share_model_span"],
                    "chains": len(r["rows"]["chains"])} for mode, r in res.items()}
    print(json.dumps({"config": args.config, "overrides": overrides, "modes": table,
                      "ratio_streaming_over_barrier": round(s["wall_s"] / b["wall_s"], 3),
                      "rows_identical": same, "bench_s": round(time.time() - t, 1)}, indent=2))
    if not same and not args.no_compare:
        sys.exit("the two modes wrote different rows: the comparison is void")


if __name__ == "__main__":
    main()
