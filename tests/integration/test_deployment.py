"""The documented operations path, for real: a local `prefect server start`, a process
worker, `prefect deploy` from prefect.yaml, deployment runs through the API, artifacts read
back through the API, then a run whose diversity stage fails (its endpoint is down) and a
`prefect flow-run retry` that finishes it, recomputing only the unfinished shards.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flows import stages as declared
from infra.storage import RunStore
from tests.conftest import ROOT
from tests.support.servers import FaultServer, free_port

PREFECT = str(Path(sys.executable).with_name("prefect"))


def _wait(fn, timeout: float, what: str, every: float = 1.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_PREFETCH_SECONDS": "5", "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("PREFECT_PROFILES_PATH", None)
    logs = home / "logs"
    logs.mkdir()
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT)
    worker = None
    try:
        _wait(lambda: _ok(f"{api}/health"), 120, "the Prefect server")
        run = lambda *a: subprocess.run([PREFECT, "--no-prompt", *a], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)  # noqa: E731
        r = run("work-pool", "create", "sphere-local", "--type", "process")
        assert r.returncode == 0, r.stdout + r.stderr
        r = run("deploy", "--name", "quickstart-nightly")
        assert r.returncode == 0, r.stdout + r.stderr
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "sphere-local", "--type", "process"], env=env, cwd=ROOT,
                                  stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT)
        yield api, run, logs
    finally:
        for p in (worker, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _deployment(api: str) -> dict:
    r = httpx.get(f"{api}/deployments/name/sphere-run/quickstart-nightly", timeout=10)
    r.raise_for_status()
    return r.json()


def _start(api: str, parameters: dict) -> str:
    dep = _deployment(api)
    r = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters}, timeout=10)
    r.raise_for_status()
    return r.json()["id"]


def _final_state(api: str, flow_run_id: str, timeout: float = 420) -> dict:
    def done():
        fr = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
        return fr if fr["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    return _wait(done, timeout, f"flow run {flow_run_id}", every=2)


def _artifacts(api: str, flow_run_id: str) -> dict:
    r = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}, timeout=10)
    r.raise_for_status()
    return {a["key"]: a for a in r.json() if a.get("key")}


def _run_dir(data_root: Path, flow_run_id: str) -> Path:
    found = [p for p in (data_root / "runs").glob(f"*-fr{flow_run_id.replace('-', '')[:12]}")]
    assert len(found) == 1, f"expected one run directory for flow run {flow_run_id}, found {found}"
    return found[0]


def _markers(run_dir: Path, stage: str) -> dict[str, float]:
    return {m.name: json.loads(m.read_text())["written_at"] for m in (run_dir / "_done").glob(f"chains.{stage}.*.json")}


def test_deployment_runs_publish_artifacts_and_a_retry_redoes_only_failed_shards(prefect_server, tmp_path):
    api, run, logs = prefect_server
    dep = _deployment(api)
    assert dep["global_concurrency_limit"]["limit"] == 1 and dep["work_pool_name"] == "sphere-local"
    assert dep["schedules"] and dep["schedules"][0]["schedule"]["cron"] == "0 3 * * *"

    data = tmp_path / "data"
    small = {"seeds.n": 12, "metrics.embedder": "hashed", "generation.shard_size": 6}
    fr = _start(api, {"data_root": str(data), "overrides": small})
    state = _final_state(api, fr)
    assert state["state_type"] == "COMPLETED", (logs / "worker.log").read_text()[-4000:]
    arts = _artifacts(api, fr)
    assert {"sphere-run-summary", "sphere-row-counts", "sphere-qdc", "sphere-report"} <= set(arts)
    run_dir = _run_dir(data, fr)
    assert str(run_dir / "report.html") in arts["sphere-report"]["data"] and (run_dir / "report.html").is_file()

    # A run whose diversity endpoint is down: generation, routing and self-correction finish,
    # every diversity shard fails, the flow run fails.
    endpoint = FaultServer(schedule=["503"])
    try:
        broken = {**small, "diversity.shard_size": 3, "pool.max_retries": 0,
                  "diversity.small_policy": {"kind": "openai", "base_url": endpoint.base_url, "model": "small",
                                             "max_retries": 1, "backoff_base_s": 0.05, "request_timeout_s": 5}}
        fr2 = _start(api, {"data_root": str(data), "overrides": broken})
        assert _final_state(api, fr2)["state_type"] == "FAILED"
        run2 = _run_dir(data, fr2)
        store = RunStore.at(run2)
        gen_before = _markers(run2, "generation")
        sc_before = _markers(run2, "self_correction")
        div_shards = declared.get("diversity").shards(str(run2))  # what routing fed diversity
        assert gen_before and div_shards and not _markers(run2, "diversity")
        assert not store.is_done("metrics", "metrics", "00000")

        endpoint.set_schedule(["ok"])  # the endpoint is back
        r = run("flow-run", "retry", fr2)
        assert r.returncode == 0, r.stdout + r.stderr
        time.sleep(2)
        final = _final_state(api, fr2)
        assert final["state_type"] == "COMPLETED", (logs / "worker.log").read_text()[-4000:]
    finally:
        endpoint.close()
    assert _run_dir(data, fr2) == run2  # the retry found the same run directory
    assert _markers(run2, "generation") == gen_before  # finished shards untouched
    assert _markers(run2, "self_correction") == sc_before
    div = _markers(run2, "diversity")
    assert len(div) == len(div_shards)  # every failed shard was redone
    assert min(div.values()) > max(gen_before.values())
    assert store.is_done("metrics", "metrics", "00000")
    assert endpoint.counts.get("ok", 0) > 0
    assert {"sphere-qdc", "sphere-report"} <= set(_artifacts(api, fr2))
