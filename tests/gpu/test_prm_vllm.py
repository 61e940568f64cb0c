"""GPU tier: the prm scorer against a real vLLM-served process reward model.

Needs a CUDA GPU, the gpu-worker environment (vLLM) and the model on local disk:
    SPHERE_PRM_MODEL=/models/Qwen2.5-Math-PRM-7B pytest -m gpu tests/gpu
"""

import os
import subprocess
import sys
import time

import pytest

from tasks.scorers import PRMScorer
from tasks.scorers import ScoreItem

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def prm_server():
    model = os.environ.get("SPHERE_PRM_MODEL")
    if not model:
        pytest.skip("set SPHERE_PRM_MODEL to a local Qwen2.5-Math-PRM checkpoint")
    port = 8011
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--task", "reward",
                             "--port", str(port), "--served-model-name", "prm", "--gpu-memory-utilization", "0.5"])
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=60)


def test_real_prm_prefers_the_right_step(prm_server):
    item = ScoreItem("Tom has 10 apples. He buys 5 more. He sells 3. How many apples does he have?", "12", "p",
                     ("He buys 5 more, so 10+5=15.",), ("He sells 3, so 15-3=12.", "He sells 3, so 15-3=21."))
    right, wrong = PRMScorer(prm_server, "prm").score_batch([item])[0]
    assert 0 <= wrong < right <= 1
