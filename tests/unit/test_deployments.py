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
