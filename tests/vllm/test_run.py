"""Whole runs on the real engine: every stage with the policy and the small policy on vLLM (in
the worker environment), killed with SIGKILL during a vLLM stage and resumed; and a vLLM policy
beside a tiny small policy in the driver's environment (tests/vllm/test_evolve.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from infra.storage import RunStore
from tests.conftest import ROOT
from tests.vllm.conftest import POLICY, policy

SMALL = str(ROOT / "infra" / "models" / "tiny-small")
# greedy everywhere (search, self-correction and diversity sample at search.temperature), so
# the vLLM run's chains can be compared text for text with the tiny backend's
COMMON = {"seeds": {"kind": "builtin", "n": 8, "seed": 0, "min_steps": 2, "max_steps": 4},
          "search": {"candidates": 5, "temperature": 0.0, "max_depth": 6, "reward_mode": "absolute"},
          "pool": {"actors": 1, "num_cpus": 1, "startup_timeout_s": 600},
          "generation": {"shard_size": 2, "concurrency": 1}, "metrics": {"enabled": False}}


def _descendants(pid: int) -> dict[int, str]:
    """{pid: command line} of every live descendant of ``pid``."""
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    out, todo = {}, [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            try:
                out[k] = (Path("/proc") / str(k) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            todo.append(k)
    return out


def _alive(pids) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in (Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[:1] or ["Z"])]


def _key(store: RunStore) -> list[tuple]:
    return sorted((c["stage"], c["problem_id"], c["branch"], c["text"], c["correct"]) for c in store.read_table("chains").to_pylist())


def test_a_run_on_vllm_killed_mid_stage_resumes_to_every_chain_once_equal_to_the_tiny_backend(prefect_api, ray_local, tmp_path):
    """Issue 19.3: policy and small policy both on vLLM, every stage. SIGKILL of the driver's
    process group while generation is half committed leaves no engine process behind; --resume
    finishes the run with every chain exactly once, and (greedy) the chains equal those of the
    tiny backend on the same checkpoints, so nothing committed before the kill was redone
    differently."""
    from flows.pipeline import sphere_run

    sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="tiny", data_root=str(tmp_path / "tiny"),
               overrides={**{f"{k}.{kk}": vv for k, v in COMMON.items() for kk, vv in v.items()},
                          "policy": {"kind": "tiny", "checkpoint": POLICY}, "diversity.small_policy": {"kind": "tiny", "checkpoint": SMALL}})
    want = _key(RunStore(tmp_path / "tiny", "tiny"))
    assert {s for s, *_ in want} >= {"generation", "diversity"} and len(want) >= 16

    cfg = tmp_path / "vllm.yaml"
    cfg.write_text(yaml.safe_dump({"name": "vllm", **COMMON, "policy": policy().model_dump(mode="json"),
                                   "diversity": {"small_policy": policy(model=SMALL).model_dump(mode="json")}}))
    root = tmp_path / "vllm"
    cmd = [sys.executable, "-m", "flows.cli", "run", str(cfg), "--data-root", str(root)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, seen, killed_at = time.time() + 480, {}, None
    while time.time() < deadline and proc.poll() is None:
        seen.update(_descendants(proc.pid))
        markers = list(root.glob("runs/*/_done/chains.generation.*.json"))
        if 1 <= len(markers) < 4:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = len(markers)
            break
        time.sleep(0.2)
    proc.wait(timeout=30)
    assert killed_at is not None, "the run finished or stalled before it could be killed during generation"
    engines = {p: c for p, c in seen.items() if "EngineCore" in c or "BackendActor" in c}
    assert engines, f"no engine process was seen among the driver's descendants: {sorted(set(seen.values()))[:20]}"
    t0 = time.time()
    while _alive(seen) and time.time() - t0 < 30:
        time.sleep(0.5)
    assert not _alive(seen), {p: seen[p] for p in _alive(seen)}  # nothing the killed driver started outlives it

    run_id = next(p.name for p in (root / "runs").iterdir() if p.name != "_schema")
    res = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--resume", run_id, "--data-root", str(root)], cwd=ROOT,
                         env=os.environ, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    store = RunStore(root, run_id)
    chains = store.read_table("chains").to_pylist()
    assert len({c["chain_id"] for c in chains}) == len(chains)  # none doubled
    assert _key(store) == want  # none lost, and the same texts and verdicts as the tiny backend
    assert {c["model"] for c in chains} == {f"vllm:{POLICY}", f"vllm:{SMALL}"}
    # what each stage cost, over the shards committed before the kill and after the resume
    cost = json.loads((root / "runs" / run_id / "summary.json").read_text())["cost"]
    shards = len(list(root.glob(f"runs/{run_id}/_done/chains.generation.*.json")))
    assert cost["generation"]["shards"] == shards == 4 and cost["generation"]["engine_seconds"] > 0
    assert cost["diversity"]["completion_tokens"] > 0 and cost["generation"]["completions"] == 5 * cost["generation"]["requests"]
