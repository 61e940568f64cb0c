"""The default install carries no CUDA and no vLLM; vLLM is only the gpu-worker extra."""

import importlib.metadata as md
import tomllib

from tests.conftest import ROOT


def _name(req: str) -> str:
    import re

    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()


def test_default_dependencies_name_no_vllm_and_no_cuda_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    default = [_name(r) for r in project["dependencies"]]
    assert "vllm" not in default and not [d for d in default if d.startswith("nvidia")]
    assert [_name(r) for r in project["optional-dependencies"]["gpu-worker"]] == ["vllm"]
    assert "torch==2.13.0" in project["dependencies"]  # the CPU wheel; a bare "torch" pulls CUDA


def test_the_installed_environment_has_no_vllm_and_no_cuda_wheels():
    names = {(d.metadata["Name"] or "").lower() for d in md.distributions()}
    assert "vllm" not in names
    assert not [n for n in names if n.startswith("nvidia-") or n in ("triton", "cupy")]
    assert md.version("torch").endswith("+cpu")
