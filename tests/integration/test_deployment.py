"""The documented operations path, for real: a local `prefect server start`, a process
worker, `prefect deploy` from prefect.yaml, deployment runs through the API, artifacts read
back through the API, then a run whose diversity stage fails (its endpoint is down) and a
`prefect flow-run retry` that finishes it, recomputing only the unfinished shards.
"""

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

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


def readme_recipe() -> list[list[str]]:
    """The README's deployment recipe as this module runs it: the ``prefect`` commands of the
    first fenced block under ``## Deployments`` that come before ``prefect worker start`` (the
    server and the worker are this module's fixtures), so the README and this test cannot drift."""
    section = (ROOT / "README.md").read_text().split("\n## Deployments\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        argv = shlex.split(line, comments=True)
        if argv[:3] == ["prefect", "worker", "start"]:
            break
        if argv and argv[0] == "prefect":
            commands.append(argv)
    assert any("deploy" in c for c in commands), f"no `prefect deploy` in the README's deployment block:\n{block}"
    return commands


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A fresh local ``prefect server start`` on which the README's recipe has been run. Yields
    the API URL, a ``prefect --no-prompt`` runner, the logs folder and the recipe's
    (command, completed process) pairs. The scheduler service is off: schedules are registered
    but make no runs during the tests."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_PREFETCH_SECONDS": "5", "PREFECT_LOGGING_LEVEL": "INFO",
           "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
    env.pop("PREFECT_PROFILES_PATH", None)
    logs = home / "logs"
    logs.mkdir()
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT)
    try:
        _wait(lambda: _ok(f"{api}/health"), 120, "the Prefect server")
        recipe = [(argv, subprocess.run([PREFECT, *argv[1:]], env=env, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                                        text=True, timeout=300)) for argv in readme_recipe()]
        run = lambda *a: subprocess.run([PREFECT, "--no-prompt", *a], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)  # noqa: E731
        yield api, run, logs, recipe, env
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def worker(prefect_server):
    """A process worker on ``sphere-local``, as the README starts it."""
    api, run, logs, recipe, env = prefect_server
    p = subprocess.Popen([PREFECT, "worker", "start", "--pool", "sphere-local", "--type", "process"], env=env, cwd=ROOT,
                         stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT)
    try:
        yield p
    finally:
        _stop(p)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still there after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _api(method: str, url: str, **kw) -> httpx.Response:
    """One API call, retried on 429/502/503 as Prefect's own client does: its SQLite server,
    on a 2-core machine busy with the rest of the suite, answers 503 to a request it could
    not serve in time (seen on create_flow_run)."""
    for attempt in range(6):
        r = httpx.request(method, url, timeout=30, **kw)
        if r.status_code not in (429, 502, 503):
            break
        time.sleep(1 + 2 * attempt)
    r.raise_for_status()
    return r


def _deployment(api: str, name: str = "sphere-run/quickstart-nightly") -> dict:
    return _api("GET", f"{api}/deployments/name/{name}").json()


def _start(api: str, parameters: dict, deployment: str = "sphere-run/quickstart-nightly") -> str:
    dep = _deployment(api, deployment)
    return _api("POST", f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters}).json()["id"]


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


def test_the_readme_recipe_registers_every_deployment_of_prefect_yaml(prefect_server):
    api, run, logs, recipe, env = prefect_server
    for argv, r in recipe:
        assert r.returncode == 0, f"README command `{shlex.join(argv)}` exited {r.returncode}:\n{r.stdout}{r.stderr}"
    declared_deps = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    r = httpx.post(f"{api}/deployments/filter", json={}, timeout=10)
    r.raise_for_status()
    registered = {d["name"]: d for d in r.json()}
    assert set(registered) == {d["name"] for d in declared_deps}
    for want in declared_deps:
        got = registered[want["name"]]
        assert got["entrypoint"] == want["entrypoint"] and got["parameters"] == want["parameters"], want["name"]
        assert got["work_pool_name"] == want["work_pool"]["name"], want["name"]
        assert got["global_concurrency_limit"]["limit"] == want["concurrency_limit"], want["name"]
        assert [(s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in got["schedules"]] == \
            [(s["cron"], s["timezone"], s["active"]) for s in want["schedules"]], want["name"]


def test_deployment_runs_publish_artifacts_and_a_retry_redoes_only_failed_shards(prefect_server, worker, tmp_path):
    api, run, logs, recipe, env = prefect_server
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
    assert state["name"] == run_dir.name  # the flow run is named with the run id it wrote
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


def test_an_evolve_deployment_run_is_named_with_the_evolve_id_it_records(prefect_server, worker, tmp_path):
    api, run, logs, recipe, env = prefect_server
    data = tmp_path / "data"
    # Seeds that do not exist: the evolve records itself, then round 0's run fails at once on its inputs.
    # (evolve.new_seeds off: with it, file seeds are refused before the record is written)
    missing = {"seeds": {"kind": "file", "paths": [str(tmp_path / "missing.jsonl")]}, "evolve.new_seeds": False}
    fr = _start(api, {"data_root": str(data), "overrides": missing}, "sphere-evolve/evolve-weekly")
    state = _final_state(api, fr, timeout=240)
    assert state["state_type"] == "FAILED", (logs / "worker.log").read_text()[-4000:]
    records = list((data / "evolve").glob("*.json"))
    assert len(records) == 1, records
    assert state["name"] == records[0].stem == json.loads(records[0].read_text())["evolve_id"]
    assert state["name"].endswith("-evolve-fr" + fr.replace("-", "")[:12])
