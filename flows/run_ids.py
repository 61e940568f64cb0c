"""The ids of runs, sweeps and evolves: one rule for all of them.

A new id is ``<name>-<YYYYmmdd-HHMMSS>-<4 hex>``. Inside a Prefect flow run (a deployment's
scheduled run) the id is derived from the flow run's id instead, ``<name>-fr<12 hex>``, so
``prefect flow-run retry`` finds the same run directory (or evolve record) and redoes only
what is unfinished. Evolves and sweeps pass ``<name>-evolve`` / ``<name>-sweep`` as the name.
"""

from __future__ import annotations

import secrets
import time


def new_run_id(name: str) -> str:
    """A new id: ``<name>-<YYYYmmdd-HHMMSS>-<4 hex>``."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def flow_run_bound_id(name: str) -> str | None:
    """Inside a Prefect flow run, the id derived from the flow run's id, ``<name>-fr<12 hex>``;
    None outside a flow run."""
    from prefect import runtime  # looked up at each call: the tests stand a fake flow run in for it

    fid = runtime.flow_run.get_id()
    return f"{name}-fr{str(fid).replace('-', '')[:12]}" if fid else None


def bound_or_new_id(name: str) -> str:
    """The id a run (or evolve, sweep) without an explicit id gets: inside a flow run the one
    bound to it (``flow_run_bound_id``), else a new one (``new_run_id``)."""
    return flow_run_bound_id(name) or new_run_id(name)


def run_flow_run_name() -> str:
    """The ``sphere-run`` flow run's name: the id of the run it writes (its ``run_id``
    parameter, else the id the run gets from the flow run, ``<name>-fr<id>``), as ``sphere
    report``, ``rerun``, ``export`` and ``run --resume`` take it. ``new-run`` only when the
    config cannot be read; the flow run then fails in ``prepare_run`` with the config's error."""
    from prefect import runtime

    from infra.config import config_or_defaults

    params = runtime.flow_run.parameters
    if params.get("run_id"):
        return params["run_id"]
    try:
        name = config_or_defaults(params.get("config_path"), params.get("overrides")).name
    except Exception:  # noqa: BLE001 - a name must not fail the run before prepare_run reports why
        return "new-run"
    return flow_run_bound_id(name) or "new-run"
