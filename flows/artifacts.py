"""The run's Prefect artifacts: what a user sees of a finished run in the Prefect UI
(row counts, cost per stage, routes and pairs, validation failures, the QDC table and
where the HTML report is)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from infra.cost import cost_rows
from infra.storage import RunStore
from tasks.report import build_report, qdc_rows


def publish_summary(summary: dict) -> None:
    rows = [{"table": t, "rows": n} for t, n in summary["counts"].items()]
    create_table_artifact(key="sphere-row-counts", table=rows, description=f"Row counts of run {summary['run_id']}")
    if summary["cost"]:
        create_table_artifact(key="sphere-stage-cost", table=cost_rows(summary["cost"]),
                              description=f"What each stage of run {summary['run_id']} cost (its committed shards)")
    val = RunStore.at(summary["run_dir"]).read_table("validation").to_pylist()
    failed = [v for v in val if not v["success"]]
    md = [
        f"# Run `{summary['run_id']}`",
        f"Data: `{summary['run_dir']}`",
        "",
        "| route | problems |",
        "|---|---|",
        *[f"| {r} | {n} |" for r, n in summary["routes"].items()],
        "",
        "| stage | pairs |",
        "|---|---|",
        *[f"| {st} | {n} |" for st, n in summary["pairs_by_stage"].items()],
        "",
        f"Validation: {len(val)} expectation runs, {len(failed)} with failures.",
        *[f"- {v['table']}/{v['stage']}/{v['shard']}: {v['expectation']}({v['column']}) {v['unexpected_count']} rows" for v in failed[:50]],
    ]
    create_markdown_artifact(key="sphere-run-summary", markdown="\n".join(md), description="SPHERE run summary")


def publish_report(run_dir: str) -> Path:
    """Write ``<run>/report.html`` and publish the QDC table and the report path as artifacts."""
    path, runs = build_report([run_dir])
    create_table_artifact(key="sphere-qdc", table=qdc_rows(runs[0]), description=f"QDC metrics of run {runs[0].run_id}")
    create_markdown_artifact(
        key="sphere-report",
        markdown=f"# QDC report of `{runs[0].run_id}`\n\nSelf-contained HTML: `{path}`\n\n"
        f"Open it in a browser, or compare runs: `sphere report {runs[0].run_id} --compare OTHER_RUN`.",
        description="Where the run's QDC report is",
    )
    return path


def publish(summary: dict, with_report: bool) -> dict:
    """Publish the run's summary and, ``with_report`` (its metrics were computed), write and
    publish its QDC report; a report that fails is a warning and ``report_error`` in the
    returned summary (the data and metrics are committed: a plotting failure must not fail
    the run). Returns the summary with ``report`` (its path) or ``report_error``."""
    publish_summary(summary)
    if with_report:
        try:
            summary["report"] = str(publish_report(summary["run_dir"]))
        except Exception as e:  # noqa: BLE001
            get_run_logger().warning("QDC report not written: %s: %s (retry with `sphere report %s`)", type(e).__name__, e, summary["run_id"])
            summary["report_error"] = f"{type(e).__name__}: {e}"
    return summary
