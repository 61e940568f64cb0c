"""Seeds at scale: the seeds stage on GSM8K-format JSONL files of 10k, 100k and 1M rows.

For each size, a file is generated in a temp dir (distinct problems, plus a few
malformed rows and duplicates mixed in: one bad row in 2,000), then a fresh subprocess
opens a real run dir and calls the stage itself (``tasks.seeds.seeds_task.fn``). The GX
context is built first, as ``sphere run`` does in the background (``validation.preload``),
so ``wall`` is the stage alone; ``cpu`` is its CPU time (all threads: on a shared machine
``rows / cpu`` is the steadier figure); ``total`` is the child's whole life (imports included).
Peak RSS is the child's ``ru_maxrss``. A second call on the same run dir after deleting
the stage marker measures a resume with every shard committed (``resume``: nothing rewritten).

Targets: peak RSS flat from 10k to 1M rows (ratio rss_1M / rss_10k close to 1) and at
least 50,000 rows/s.

    python bench/seeds_scale.py [--sizes 10000,100000,1000000] [--shard-size 50] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAD_EVERY = 2_000
BAD_ROWS = [
    b'{"question": "unclosed", ',
    b"[1, 2, 3]",
    b'{"answer": "#### 3"}',
    b'{"question": "What is 2+2?", "answer": "four, I think"}',
    b'{"question": "caf\xe9 au lait?", "answer": "#### 1"}',
]

CHILD = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from infra.env import apply_offline_env
apply_offline_env()
from infra.config import RunConfig
from infra.storage import RunStore
from infra.validation import preload
from tasks.seeds import seeds_task
preload().join()
store = RunStore(__import__("pathlib").Path(sys.argv[2]), "bench")
if not store.exists():
    store.save_config(RunConfig.model_validate({"seeds": {"kind": "file", "paths": [sys.argv[3]]},
                                                "generation": {"shard_size": int(sys.argv[4])}}).model_dump(mode="json"))
t, c = time.perf_counter(), os.times()
seeds_task.fn(str(store.run_dir), "00000", "bench")
wall, c2 = time.perf_counter() - t, os.times()
m = json.loads((store.run_dir / "_done" / "seeds.manifest.json").read_text())
print(json.dumps({"wall": wall, "cpu": c2.user - c.user + c2.system - c.system, "total": time.perf_counter() - t0, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "shards": len(m["shards"]), "problems": m["problems"], "quarantined": m["quarantined"]}))
"""


def write_gsm8k(path: Path, n: int, seed: int = 0) -> int:
    """``n`` rows of GSM8K-format JSONL: distinct problems, a malformed row or a duplicate
    every ``BAD_EVERY`` rows. Returns the number of bad rows."""
    rnd, bad, last = random.Random(seed), 0, b""  # last: the previous good row (a duplicate row repeats it)
    with open(path, "wb") as f:
        for i in range(n):
            if i % BAD_EVERY == BAD_EVERY - 1:
                f.write((BAD_ROWS + [last])[bad % (len(BAD_ROWS) + 1)] + b"\n")
                bad += 1
                continue
            a, b = rnd.randint(2, 999), rnd.randint(2, 999)
            row = {"question": f"Natalia sold clips to {a} of her friends in April, and then she sold {b} clips in May. "
                               f"(problem {i}) How many clips did Natalia sell altogether in April and May?",
                   "answer": f"Natalia sold {a}+{b} = <<{a}+{b}={a + b}>>{a + b} clips altogether in April and May.\n#### {a + b}"}
            last = json.dumps(row).encode()
            f.write(last + b"\n")
    return bad


def run_child(data_root: Path, seeds: Path, shard_size: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(data_root), str(seeds), str(shard_size)],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"the seeds stage failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temp dir, removed)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="sphere-seeds-bench-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for n in sizes:
            seeds = work / f"gsm8k-{n}.jsonl"
            t = time.perf_counter()
            bad = write_gsm8k(seeds, n)
            print(f"# wrote {seeds.name}: {n:,} rows, {bad} bad, {seeds.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.1f}s",
                  file=sys.stderr)
            first = run_child(work / f"data-{n}", seeds, args.shard_size)
            (work / f"data-{n}" / "runs" / "bench" / "_done" / "stages" / "seeds.00000.json").unlink()
            again = run_child(work / f"data-{n}", seeds, args.shard_size)
            assert first["problems"] + first["quarantined"] == n and again["shards"] == first["shards"]
            rows.append({"rows": n, **first, "resume": again["wall"]})
        print(f"{'rows':>9} {'wall s':>7} {'rows/s':>8} {'cpu s':>6} {'rows/cpu s':>10} {'peak RSS MB':>11} {'shards':>6} "
              f"{'quarantined':>11} {'total s':>7} {'resume s':>8}")
        for r in rows:
            print(f"{r['rows']:>9,} {r['wall']:>7.1f} {r['rows'] / r['wall']:>8,.0f} {r['cpu']:>6.1f} {r['rows'] / r['cpu']:>10,.0f} "
                  f"{r['rss_kb'] / 1024:>11.0f} {r['shards']:>6,} {r['quarantined']:>11,} {r['total']:>7.1f} {r['resume']:>8.1f}")
        if len(rows) > 1:
            print(f"rss_{rows[-1]['rows']:,} / rss_{rows[0]['rows']:,} = {rows[-1]['rss_kb'] / rows[0]['rss_kb']:.2f}")


if __name__ == "__main__":
    main()
