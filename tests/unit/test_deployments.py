"""prefect.yaml: every deployment points at a real flow with parameters it accepts, a work
pool, a schedule and a concurrency limit."""

import importlib
import inspect

import pytest
import yaml

from tests.conftest import ROOT

DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_every_deployment_runs_a_real_flow_with_parameters_it_accepts(dep):
    from prefect import Flow

    path, fn = dep["entrypoint"].split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), fn)
    assert isinstance(flow, Flow)
    params = inspect.signature(flow.fn).parameters
    assert set(dep["parameters"]) <= set(params)
    assert all(p.default is not inspect.Parameter.empty for name, p in params.items() if name not in dep["parameters"])
    assert (ROOT / dep["parameters"]["config_path"]).is_file()
    assert dep["work_pool"]["name"] and dep["concurrency_limit"] == 1 and dep["schedules"][0]["cron"]


def test_self_evolution_has_a_deployment():
    assert any(d["entrypoint"] == "flows/evolve.py:sphere_evolve" for d in DEPLOYMENTS)


def test_flow_runs_are_named_with_the_id_they_write_and_naming_never_fails_a_run(monkeypatch):
    """The integration test checks real deployment runs; here the explicit ids and the
    fallbacks when the config cannot be read (the run then fails with the config's error)."""
    from types import SimpleNamespace

    import prefect.runtime

    from flows import evolve, pipeline

    def runtime(**params):
        fake = SimpleNamespace(parameters=params, get_id=lambda: "0a1b2c3d-4e5f-6789-abcd-ef0123456789")
        monkeypatch.setattr(prefect.runtime, "flow_run", fake)

    quickstart = str(ROOT / "configs" / "quickstart.yaml")
    runtime(config_path=quickstart, run_id="mine")
    assert pipeline._run_name() == "mine"
    runtime(config_path=quickstart, overrides={"name": "nightly"})
    assert pipeline._run_name() == "nightly-fr0a1b2c3d4e5f"
    runtime(config_path=str(ROOT / "no-such.yaml"))
    assert pipeline._run_name() == "new-run"
    runtime(config_path=str(ROOT / "configs" / "evolve.yaml"), evolve_id="ev-1")
    assert evolve._evolve_name() == "ev-1"
    runtime(config_path=str(ROOT / "configs" / "evolve.yaml"))
    assert evolve._evolve_name() == "sphere-evolve-fr0a1b2c3d4e5f"
    runtime(config_path=str(ROOT / "no-such.yaml"))
    assert evolve._evolve_name() == "evolve-new"
