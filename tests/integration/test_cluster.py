"""A run on a real multi-node Ray cluster (``pool.address``) that loses a worker node in the
middle of its generation stage, and still ends with exactly the rows of an uninterrupted run.
The trial's data root is on an object store (a real S3 API server, moto's, on 127.0.0.1): the
cluster's hosts share no folder, only the bucket; the reference run's root is a local folder.

The cluster (Ray's own ``ray.cluster_utils.Cluster``: a head and two worker nodes, each a
raylet with its own CPUs and ``sphere_worker`` resources, all on this machine) and the trial
run live in a driver subprocess (``tests.support.cluster_trial``): this process may already
be on a local Ray, and the cluster keeps its sessions and address file in a private
``RAY_TMPDIR``, away from any other Ray on the machine. The uninterrupted reference run of
the same config runs meanwhile on a local single-node Ray (``sphere run``).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import ROOT
from tests.support.cluster_trial import CONFIG, compare, overrides, rows_of


@pytest.fixture
def s3(tmp_path):
    from tests.support.s3 import S3Server

    server = S3Server(log_dir=tmp_path)
    yield server
    server.stop()


@pytest.mark.slow
def test_a_run_on_a_cluster_loses_a_worker_node_mid_stage_and_keeps_every_row_once(prefect_api, tmp_path, s3):
    from prefect.settings import PREFECT_API_URL

    from tests.support.s3 import restore, use_in_process

    ray_tmp = tempfile.mkdtemp(prefix="rayc", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    sets = [a for k, v in overrides(None).items() for a in ("--set", f"{k}={json.dumps(v)}")]
    reference = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(CONFIG), "--data-root", str(tmp_path / "ref"), *sets],
                                 cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        trial = subprocess.run([sys.executable, "-m", "tests.support.cluster_trial", s3.uri("cluster"), "--no-reference"], cwd=ROOT,
                               env={**env, **s3.env, "RAY_TMPDIR": ray_tmp, "SPHERE_CACHE": str(tmp_path / "cache")},
                               capture_output=True, text=True, timeout=420)
        _, ref_err = reference.communicate(timeout=420)
    finally:
        reference.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert reference.returncode == 0, ref_err[-3000:]
    lines = [ln for ln in trial.stdout.splitlines() if ln.startswith("CLUSTER_TRIAL ")]
    assert trial.returncode == 0 and lines, (trial.stdout + trial.stderr)[-5000:]
    r = json.loads(lines[-1].removeprefix("CLUSTER_TRIAL "))
    ref_run = next(p for p in (tmp_path / "ref" / "runs").iterdir() if p.name != "_schema")
    assert r["run_dir"].startswith(s3.uri("cluster") + "/trial/runs/")  # the trial ran on the store
    old = use_in_process(s3)
    try:
        rows = compare(rows_of(str(ref_run)), rows_of(r["run_dir"]))
    finally:
        restore(old)
    print(f"\nnode-loss trial: rows lost = {rows['rows_lost']}, rows doubled = {rows['rows_doubled']} "
          f"(pool retries {r['pool_retries']}; node killed after {r['killed'].get('at_markers')}/{r['generation_shards']} "
          f"generation shards; seconds {r['seconds']}; per table {rows['tables']})")

    killed = r["killed"]
    assert "error" not in killed, killed
    assert len(killed["actor_nodes"]) >= 2  # pool.placement: spread put the generation actors on two nodes
    assert killed["node"] in killed["actor_nodes"] and killed["at_markers"] < r["generation_shards"]  # mid-stage
    assert r["head_node"] not in r["trial_actor_nodes"]  # pool.resources: only nodes with sphere_worker
    assert r["pool_retries"] >= 1 and r["actors_started_after_kill_on_survivors"]
    assert all(t["reference"] > 0 for t in rows["tables"].values()), rows["tables"]
    assert rows["rows_lost"] == 0 and rows["rows_doubled"] == 0, rows["tables"]
