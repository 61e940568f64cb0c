"""Sweeps: the same seeds under several settings, compared in one report.

``sphere_sweep(config, grid)`` runs one full pipeline per point of the cartesian product
of ``grid`` (dotted config field -> values, e.g. ``{"search.temperature": [0.3, 0.8, 1.5]}``).
Every point keeps the config's ``seeds`` section, so every run works on the same problems,
and the comparison isolates the swept settings. The runs are ordinary runs (resumable,
queryable); the sweep writes ``<data_root>/sweeps/<sweep_id>.json`` (the points and their
run ids) and the comparison report ``<data_root>/sweeps/<sweep_id>.html`` with the
quality-diversity plane and its Pareto front.
"""

from __future__ import annotations

import itertools
import json

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.pipeline import sphere_run
from flows.run_ids import new_run_id
from infra.config import load_config
from infra.locks import writer_lock
from infra.storage import read_json
from infra.fs import as_path


REPAIR = "it lists the sweep's runs: restore it, or start a new sweep (the runs are kept)"


class SweepError(ValueError):
    """A sweep grid is malformed (no values, or a field that is not in the config)."""


def grid_points(grid: dict[str, list]) -> list[dict]:
    """The cartesian product of ``grid`` as a list of override mappings (in grid order)."""
    if not grid or any(not v for v in grid.values()):
        raise SweepError(f"a sweep needs at least one field with at least one value, got {grid!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


@flow(name="sphere-sweep", flow_run_name="sweep-{sweep_id}")
def sphere_sweep(config_path: str, grid: dict[str, list], sweep_id: str, data_root: str | None = None,
                 overrides: dict | None = None) -> dict:
    """Run every grid point (resuming points whose runs exist) and write the comparison report."""
    from tasks.report import build_report

    points = grid_points(grid)
    for p in points:  # validate every point before any work
        load_config(config_path, {**(overrides or {}), **p})
    cfg = load_config(config_path, overrides)
    root = as_path(data_root or cfg.data_root).resolve()
    record_path = root / "sweeps" / f"{sweep_id}.json"
    with writer_lock(record_path.with_suffix(".lock"), f"sweep {sweep_id}"):  # one writer per sweep (each run has its own lock)
        record = (read_json(record_path, REPAIR)
                  if record_path.is_file() else {"sweep_id": sweep_id, "grid": grid, "runs": []})
        record_path.parent.mkdir(parents=True, exist_ok=True)
        for i, point in enumerate(points):
            if i < len(record["runs"]):
                run_id = record["runs"][i]["run_id"]
            else:
                run_id = f"{sweep_id}-{i:02d}"
                record["runs"].append({"run_id": run_id, "overrides": point})
                record_path.write_text(json.dumps(record, indent=2))
            sphere_run(config_path=config_path, run_id=run_id, data_root=str(root), overrides={**(overrides or {}), **point})
        run_dirs = [str(root / "runs" / r["run_id"]) for r in record["runs"]]
        report, runs = build_report(run_dirs, root / "sweeps" / f"{sweep_id}.html")
        record["report"] = str(report)
        record_path.write_text(json.dumps(record, indent=2))
        create_markdown_artifact(key="sphere-sweep-report", markdown=f"# Sweep `{sweep_id}`\n\nComparison report: `{report}`\n\n"
                                 + "\n".join(f"- `{r['run_id']}`: {r['overrides']}" for r in record["runs"]))
    return record


def new_sweep_id(name: str) -> str:
    return new_run_id(f"{name}-sweep")
