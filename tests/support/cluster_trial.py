"""Node-loss trial on a real multi-node Ray cluster (driver of tests/integration/test_cluster.py).

Starts a local cluster with Ray's own ``ray.cluster_utils.Cluster``: a head node with no
CPUs (the driver joins it) and worker nodes with CPUs and a ``sphere_worker`` custom
resource, each a separate raylet with its own resources. The pipeline joins it through
``pool.address`` and places its actors with ``pool.placement: spread`` and
``pool.resources``. Two runs of the same config, in this one process (driver):

1. a reference run, uninterrupted (``--no-reference``: none; the test runs its reference
   on a local single-node Ray in a parallel process instead, to stay within the CI budget);
2. the trial: when the first generation shard is committed, a worker node holding a
   generation actor is killed (``remove_node(allow_graceful=False)``: its raylet and the
   actor's worker process die at once); the pool replaces the lost actor on a surviving
   node and resends its chunk, and the run goes on.

Then it compares the trial's chains, pairs and sft rows with the reference run's and prints
one JSON line (``CLUSTER_TRIAL {...}``): rows lost, rows doubled, the nodes the actors ran
on. Set ``RAY_TMPDIR`` to a short private folder: the cluster writes its address file and
sessions there instead of /tmp/ray, where a plain ``ray.init()`` elsewhere on the machine
would find it.

    RAY_TMPDIR=$(mktemp -d /tmp/rayc.XXXX) python -m tests.support.cluster_trial OUT_DIR_OR_URI [--no-reference]
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from infra.env import apply_offline_env

apply_offline_env()
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "quickstart.yaml"
WORKERS = 2  # worker nodes; each fits four actors, so one survivor can hold both pools of a streaming run (2 actors each)
SHARDS = 8


def overrides(address: str | None) -> dict:
    """The run's config overrides: on the cluster at ``address``, or (None) on a local Ray,
    which has no ``sphere_worker`` resources. The rows do not depend on the pool settings."""
    if address is None:
        return {k: v for k, v in overrides("-").items() if k not in ("pool.address", "pool.resources", "pool.placement")}
    return {
        "seeds.n": 2 * SHARDS,
        "generation.shard_size": 2,
        "generation.concurrency": 1,
        "metrics.enabled": False,
        "pool.address": address,
        "pool.actors": 2,
        "pool.num_cpus": 1,
        "pool.placement": "spread",
        "pool.resources": {"sphere_worker": 1},
        "pool.batch_timeout_s": 60,
        "pool.startup_timeout_s": 120,
    }


TABLES = {"chains": "chain_id", "pairs": "pair_id", "sft": "sft_id"}


def rows_of(run_dir: str) -> dict[str, list[dict]]:
    from infra.storage import RunStore

    store = RunStore.at(run_dir)
    out = {}
    for t in TABLES:
        rows = store.read_table(t).to_pylist()
        for r in rows:
            r.pop("run_id")  # the only column that names the run
        out[t] = rows
    return out


def compare(want: dict[str, list[dict]], got: dict[str, list[dict]]) -> dict:
    """Rows lost (in the reference, not in the trial) and doubled (in the trial beyond the
    reference: extra copies or rows the reference has not), whole rows compared."""
    key = lambda r: json.dumps(r, sort_keys=True, default=str)  # noqa: E731
    per = {}
    for t, id_col in TABLES.items():
        w, g = Counter(map(key, want[t])), Counter(map(key, got[t]))
        ids = Counter(r[id_col] for r in got[t])
        per[t] = {
            "reference": len(want[t]), "trial": len(got[t]),
            "lost": sum((w - g).values()), "doubled": sum((g - w).values()),
            "duplicate_ids": sum(n - 1 for n in ids.values() if n > 1),
        }
    return {
        "tables": per,
        "rows_lost": sum(p["lost"] for p in per.values()),
        "rows_doubled": sum(p["doubled"] + p["duplicate_ids"] for p in per.values()),
    }


class _Retries(logging.Handler):
    """Counts the pool's 'retrying chunk on a fresh actor' warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        if "retrying chunk" in record.getMessage():
            self.messages.append(record.getMessage())


def backend_actors() -> dict[str, dict]:
    """Every BackendActor the cluster has seen (alive or dead): id -> {node, state, start_ms}."""
    import ray

    return {a: {"node": v["Address"]["NodeID"], "state": v["State"], "start_ms": v["StartTime"]}
            for a, v in ray._private.state.actors().items() if v["ActorClassName"].endswith("BackendActor")}


def main(out: str | Path, reference: bool = True) -> dict:
    """The trial (and, with ``reference``, the uninterrupted run first, on the same cluster);
    the figures as a dict. Without ``reference`` the caller compares ``run_dir`` itself.
    ``out`` is a folder or an object-store URI (``s3://bucket/prefix``: the data root of both)."""
    import ray

    from infra.fs import as_path

    out = as_path(out)
    from ray.cluster_utils import Cluster

    t0 = time.time()
    importer = threading.Thread(target=importlib.import_module, args=("flows.pipeline",), daemon=True)
    importer.start()  # the pipeline's imports (Prefect, GX, torch) while the nodes start
    # A killed raylet refuses the health check at once: 5 refusals 1 s apart mark its node dead
    # (Ray's default: ~15 s). A live raylet on a busy CI machine has 3 s to answer each check.
    fast_failure_detection = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                              "health_check_timeout_ms": 3000, "health_check_failure_threshold": 5}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": fast_failure_detection})
    workers = [cluster.add_node(num_cpus=4, resources={"sphere_worker": 4}) for _ in range(WORKERS)]
    cluster.wait_for_nodes()
    importer.join()
    from flows.pipeline import sphere_run

    seconds = {"cluster": round(time.time() - t0, 1)}
    retries = _Retries()
    logging.getLogger("infra.pool").addHandler(retries)
    try:
        ref = None
        if reference:
            t = time.time()
            ref = sphere_run(config_path=str(CONFIG), data_root=str(out / "reference"), overrides=overrides(cluster.address))
            seconds["reference"] = round(time.time() - t, 1)
            retries.messages.clear()
        before = backend_actors() if ray.is_initialized() else {}  # the reference run's actors
        killed: dict = {}
        trial_root = out / "trial"

        def kill_mid_generation():
            deadline = time.time() + 300
            while time.time() < deadline:
                markers = list(trial_root.glob("runs/*/_done/stages/generation.*.json"))
                if markers:
                    alive = {a: v for a, v in backend_actors().items() if a not in before and v["state"] == "ALIVE"}
                    nodes = {v["node"] for v in alive.values()}
                    victim = next((w for w in workers if w.node_id in nodes), None)
                    if victim is None:
                        killed["error"] = f"no generation actor on a worker node: {alive}"
                        return
                    killed.update(node=victim.node_id, at_markers=len(markers), actor_nodes=sorted(nodes),
                                  at_s=round(time.time() - t0, 1), at_ms=time.time() * 1000)
                    cluster.remove_node(victim, allow_graceful=False)
                    return
                time.sleep(0.02)
            killed["error"] = "no generation shard committed within 300 s"

        killer = threading.Thread(target=kill_mid_generation, daemon=True)
        killer.start()
        t = time.time()
        trial = sphere_run(config_path=str(CONFIG), data_root=str(trial_root), overrides=overrides(cluster.address))
        seconds["trial"] = round(time.time() - t, 1)
        killer.join(timeout=10)
        assert ray.get_runtime_context().get_node_id() == cluster.head_node.node_id  # the driver is on the head
        actors = {a: v for a, v in backend_actors().items() if a not in before}
        survivors = {w.node_id for w in workers} - {killed.get("node")}
        after_kill = [v["node"] for v in actors.values() if v["start_ms"] > killed.get("at_ms", float("inf"))]
        result = compare(rows_of(ref["run_dir"]), rows_of(trial["run_dir"])) if ref else {}
        result.update(
            run_dir=trial["run_dir"],
            killed=killed,
            generation_shards=SHARDS,
            pool_retries=len(retries.messages),
            trial_actors=len(actors),
            trial_actor_nodes=sorted({v["node"] for v in actors.values()}),
            actors_started_after_kill_on_survivors=bool(after_kill) and all(n in survivors for n in after_kill),
            worker_nodes=sorted(w.node_id for w in workers),
            head_node=cluster.head_node.node_id,
        )
        seconds["total"] = round(time.time() - t0, 1)
        result["seconds"] = seconds
        return result
    finally:
        logging.getLogger("infra.pool").removeHandler(retries)
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--no-reference"]
    res = main(args[0], reference="--no-reference" not in sys.argv)
    print("CLUSTER_TRIAL " + json.dumps(res, sort_keys=True), flush=True)
