"""Process environment for an offline machine.

Applied when the ``infra`` package is imported (``flows`` and ``tasks`` import it first), before Prefect,
Ray, GX or Hugging Face libraries are imported. Values already set by the user win.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def offline_defaults(prefect_home: Path | None = None) -> dict[str, str]:
    home = prefect_home or Path(os.environ.get("SPHERE_HOME", PROJECT_ROOT)) / ".prefect"
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "GX_ANALYTICS_ENABLED": "false",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "OMP_NUM_THREADS": "1",
    }


def apply_offline_env(prefect_home: Path | None = None) -> None:
    """Set the offline defaults in ``os.environ`` without overriding the user's values."""
    for key, value in offline_defaults(prefect_home).items():
        os.environ.setdefault(key, value)
