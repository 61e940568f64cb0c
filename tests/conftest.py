"""Test setup: offline environment, a private Prefect home, real local Ray."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="sphere-test-prefect-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ.setdefault("SPHERE_TEST", "1")
# the tests' Prefect servers (the session's and the deployment test's) serve many processes on
# SQLite on a 2-core machine: a statement waiting past Prefect's 10 s default answered 503
os.environ.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "60")

from infra.env import apply_offline_env  # noqa: E402

apply_offline_env()

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU and the gpu-worker environment")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """A real Prefect API (a local server on SQLite) for the whole session, for the flows
    the tests run in this process and, through ``$PREFECT_API_URL``, for the ``sphere``
    commands they start as subprocesses: without it each of those started its own
    ephemeral server (10-20 s of CPU on these machines, dozens of times per suite). Tests of
    the ephemeral server's own lifetime remove the variable (``tests/integration/test_lifetime.py``)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        try:
            yield
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    from infra.pool import close_pools

    close_pools()
    ray.shutdown()


@pytest.fixture
def data_root(tmp_path) -> Path:
    return tmp_path / "data"
