"""pool.host_concurrency_limit: a model stage waits for a slot of the host's Prefect global
concurrency limit, so two runs on one GPU host never run model stages at once."""

import asyncio
import json
import socket
import threading
import time

from tests.conftest import ROOT


def test_model_stages_wait_for_the_hosts_concurrency_slot(prefect_api, ray_local, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency

    from flows.pipeline import sphere_run

    name = f"gpu-host-{socket.gethostname()}"

    async def create():
        async with get_client() as c:
            await c.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))

    asyncio.run(create())
    held, released = threading.Event(), []

    def hold():  # another run's model stage holds the host's only slot for a while
        with concurrency(name, occupy=1, strict=True):
            held.set()
            time.sleep(8)
            released.append(time.time())

    t = threading.Thread(target=hold)
    t.start()
    held.wait(30)
    sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="limited", data_root=str(tmp_path),
               overrides={"seeds.n": 4, "pool.host_concurrency_limit": "gpu-host-{host}", "metrics.enabled": False,
                          "self_correction.enabled": False, "diversity.enabled": False})
    t.join()
    marker = next((tmp_path / "runs" / "limited" / "_done").glob("chains.generation.*.json"))
    assert json.loads(marker.read_text())["written_at"] > released[0]  # generation started only after the slot was free
