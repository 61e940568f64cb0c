"""Stages and concerns: pure functions over Arrow tables, each with a thin Prefect task wrapper."""

import infra  # noqa: F401  (applies the offline environment before Prefect or Ray is imported)
