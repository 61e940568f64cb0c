"""Infrastructure: the only code that talks to Ray, model backends, storage, the catalog,
data-quality suites and config. It imports nothing from ``tasks`` or ``flows``.

Importing this package applies the offline environment (``infra.env``) before anything
imports Prefect, Ray, GX or Hugging Face libraries; ``flows`` and ``tasks`` import it first.
"""

from infra.env import apply_offline_env

apply_offline_env()
