"""Prefect flows (wiring only), the stage declarations and the CLI."""

import infra  # noqa: F401  (applies the offline environment before Prefect or Ray is imported)
