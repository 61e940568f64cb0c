"""The ``sphere`` command line: run, rerun, query, report, export, sweep, server, check-config.

Writers (run, rerun, sweep, evolve) hold the run's, sweep's or evolve's writer lock for the
whole command (``infra.locks``); a second writer is refused with exit code 3. Readers (query,
report, export) never take it.

Where the data lives, for every command: ``--data-root`` if given, else ``$SPHERE_DATA_ROOT``,
else the config's ``data_root`` (``run``/``sweep``/``evolve``), else ``data``.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from flows import stages as declared
from infra import integrity
from infra.config import ConfigError, RunConfig, check_inputs, load_config
from infra.fs import AnyPath, StoreError, as_path, is_uri, snapshot
from infra.locks import WriterLocked, run_lock, writer_lock
from infra.storage import RunNotFound, RunStore, StorageError, read_json

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SPHERE Factory: verified math reasoning data and preference pairs.")
# soft_wrap: a message is never broken inside a path or a command a user copies (Rich wraps
# at the terminal's width otherwise); tables are still laid out to the width
console = Console(stderr=True, soft_wrap=True)
stdout = Console(soft_wrap=True)
DATA_ROOT_HELP = "Where the runs live (default: $SPHERE_DATA_ROOT, else ./data)."
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def _parse_sets(sets: list[str]) -> dict:
    out = {}
    for s in sets:
        if "=" not in s:
            raise typer.BadParameter(f"--set expects key=value, got {s!r}")
        k, v = s.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _setup(config: Path, n: Optional[int], sets: list[str], data_root: Optional[str], *, check: bool = False,
           forced: dict | None = None) -> tuple[dict, RunConfig, AnyPath]:
    """The options every writer command shares: ``--set`` (a malformed one is a usage error) and
    ``--n`` as overrides; the config validated with them (and with ``forced``, kept out of the
    overrides; ``check``: its input files too) before any work, a ``ConfigError`` being one red
    message and exit code 2; and the data root. Returns (overrides, config, data root)."""
    overrides = _parse_sets(sets)
    if n is not None:
        overrides["seeds.n"] = n
    try:
        cfg = load_config(config, {**overrides, **(forced or {})})
        if check:
            check_inputs(cfg, config)
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2)
    return overrides, cfg, _data_root(data_root, cfg.data_root)


def _resume(command: str, id_: str, root: Path, kept: str = "", tail: str = "") -> str:
    """The command that resumes ``id_`` under ``root``; with ``kept``, as the hint after a failure."""
    again = f"sphere {command} --resume {id_} --data-root {root}{tail}"
    return f"finished {kept} are kept; resume with: {again}" if kept else again


def _print_qdc(run_dir: str, out: Console | None = None) -> None:
    """Print the run's QDC of chains (``_qdc_tables``) to ``out`` (default: stdout)."""
    out = out or stdout
    for t in _qdc_tables(RunStore.at(run_dir).read_table("metrics").to_pylist(), out.width):
        out.print(t)


def _qdc_value(v: float | None) -> str:
    """A metric as the terminal shows it: 3 decimals; ``-`` when missing or NaN."""
    return "-" if v is None or v != v else f"{v:.3f}"


def _qdc_tables(rows: list[dict], width: int = 80) -> list[Table]:
    """The QDC of chains per stage from ``metrics`` rows, as tables that fit ``width`` columns
    with nothing cut: one row per metric of ``tasks.report.RUN_TABLE`` (its name as stored in
    ``metrics``, what ``sphere query`` selects), one column per stage, values to 3 decimals.
    Stages that do not fit beside the others go to a further table (one stage always goes in).
    No table when the rows hold no chains metric."""
    from rich import box
    from rich.measure import Measurement

    from tasks.report import RUN_TABLE

    by: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["table"] == "chains":
            by.setdefault(r["stage"], {})[r["metric"]] = r["value"]

    def table(stages: list[str], first: bool) -> Table:
        t = Table(title="QDC of chains per stage" if first else None, box=box.SIMPLE_HEAD, show_edge=False)
        t.add_column("metric", no_wrap=True)
        for stage in stages:
            t.add_column(stage, justify="right", no_wrap=True)
        for metric in RUN_TABLE:
            t.add_row(metric, *[_qdc_value(by[stage].get(metric)) for stage in stages])
        return t

    wide = Console(width=10_000)
    groups: list[list[str]] = []
    for stage in sorted(by):
        if groups and Measurement.get(wide, wide.options, table(groups[-1] + [stage], False)).maximum <= width:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return [table(g, i == 0) for i, g in enumerate(groups)]


def _print_run_summary(summary: dict, out: Console | None = None) -> None:
    """What ``sphere run`` prints when a run finishes: rows per table, routes and pairs by stage
    (wrapped between entries at the console's width), and the QDC of chains."""
    out = out or stdout
    t = Table()
    t.add_column("table", no_wrap=True)
    t.add_column("rows", justify="right", no_wrap=True)
    for name, count in summary["counts"].items():
        t.add_row(name, str(count))
    out.print(t)
    out.print("routes: " + (", ".join(f"{k}={v}" for k, v in summary["routes"].items()) or "none"), soft_wrap=False)
    out.print("pairs by stage: " + (", ".join(f"{k}={v}" for k, v in summary["pairs_by_stage"].items()) or "none"), soft_wrap=False)
    _print_qdc(summary["run_dir"], out)


@app.command()
def run(
    ctx: typer.Context,
    config: Optional[Path] = typer.Argument(None, help="Run config YAML (default: the offline quickstart)."),
    n: Optional[int] = typer.Option(None, "--n", help="Override the number of built-in problems (seeds.n)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Resume this run id: finished shards are kept, the rest is redone."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Override data_root from the config (or $SPHERE_DATA_ROOT)."),
    sets: list[str] = typer.Option([], "--set", help="Override any config field: --set search.candidates=8 (repeatable); with "
                                   "--resume, changes the run's stored config (logged to reruns.jsonl) and recomputes what it affects."),
) -> None:
    """Run the whole pipeline: every declared stage in order (see `sphere rerun --help` for the stages)."""
    path = config or DEFAULT_CONFIG
    overrides, cfg, root = _setup(path, n, sets, data_root, check=True)
    from flows.pipeline import prepare_run, sphere_run
    from flows.run_ids import new_run_id

    if resume:
        _run_dir(resume, root)
    run_id = resume or new_run_id(cfg.name)
    _hold(ctx, run_lock(root / "runs" / run_id))
    try:
        run_dir = prepare_run(str(path), run_id, str(root), overrides)
    except (ValueError, StorageError) as e:  # --set on resume that does not validate, a stage graph that cannot run
        # (StageGraphError), a damaged config.json (DamagedFile)
        console.print(f"[red]{e}[/red]", soft_wrap=True)
        raise typer.Exit(2)
    console.print(f"run id: [bold]{run_id}[/bold]  ({'resuming' if resume else 'new'}; data: {run_dir})")
    hint = _resume("run", run_id, root, kept="shards")
    with _lifetime(hint), _progress():
        try:
            summary = sphere_run(config_path=str(path), run_id=run_id, data_root=str(root), overrides=overrides)
        except Exception as e:
            console.print(f"[red]run {run_id} failed: {_failure(e, root)}[/red]", soft_wrap=True)
            console.print(hint, soft_wrap=True)
            raise typer.Exit(1)
    stdout.print(f"run {run_id} finished")
    _print_run_summary(summary)
    report_path = as_path(summary["run_dir"]) / "report.html"
    if report_path.is_file():
        stdout.print(f"report: {report_path}  (sphere report {run_id} --compare OTHER_RUN to compare runs)")
    where = "catalog: (none on an object store; sphere query reads the committed parts)" if is_uri(root) else f"catalog: {root / 'catalog.duckdb'}"
    stdout.print(f"data: {summary['run_dir']}\n{where}  (try: sphere query \"select stage, count(*) from chains group by 1\")")


@app.command()
def query(
    sql: str = typer.Argument(..., help="One SELECT over the catalog views: runs, problems, chains, pairs, routes, quarantine, validation, ..."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    fmt: str = typer.Option("table", "--format", help="table | csv | json | parquet"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the result to this file (csv, json, parquet), never inside the data root."),
    timeout: float = typer.Option(300.0, "--timeout", help="Stop a query still running after this many seconds."),
    memory_limit: str = typer.Option("2GB", "--memory-limit", help="DuckDB memory cap of the query (results stream, so this bounds it)."),
) -> None:
    """Run one read-only SELECT (or EXPLAIN of one) against the committed parts of every run.

    The query cannot write anywhere and reads nothing but the committed parts: COPY, ATTACH,
    INSTALL, LOAD, SET, CREATE and every other statement are refused, and DuckDB runs with
    its file system closed. Results stream to --out (written whole or not at all)."""
    from infra.catalog import CatalogError
    from infra.query import query_batches
    from infra.results import OutputError, check_out, write_result

    root = _data_root(data_root)
    try:
        target = check_out(out, fmt, root)
        with query_batches(root, sql, timeout_s=timeout, memory_limit=memory_limit) as reader:
            n = write_result(reader, reader.schema, fmt, target, show=_show_rows)
    except (CatalogError, OutputError) as e:
        console.print(str(e), style="red", markup=False, highlight=False)
        raise typer.Exit(1)
    except OSError as e:  # the output could not be written (disk full, permissions)
        console.print(f"cannot write the result to {out or 'stdout'}: {e}", style="red", markup=False, highlight=False)
        raise typer.Exit(1)
    if target is not None:
        console.print(f"wrote {n:,} rows to {target}", markup=False, highlight=False)
    elif n == 0 and fmt == "json":
        console.print("(0 rows)", markup=False, highlight=False)


def _show_rows(schema, rows: list[dict], total: int) -> None:
    table = Table(show_header=True, header_style="bold")
    for name in schema.names:
        table.add_column(name)
    for row in rows:
        table.add_row(*[("" if v is None else str(v))[:200] for v in row.values()])
    stdout.print(table)
    if total > len(rows):
        console.print(f"... {total - len(rows):,} more rows ({total:,} in all); use --format csv|json|parquet --out FILE for all")


@contextmanager
def _progress():
    """Progress bars on stderr for what the flows report (``infra.progress``): one per stage
    (shards done of shards known), and for an evolve one for the rounds; a stage's bar starts
    again with each round."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from infra import progress

    with Progress(TextColumn("{task.description:>15}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        progress.install(on_progress)
        try:
            yield
        finally:
            progress.install(None)


def _failure(e: BaseException, root: Path) -> str:
    """One line for a failure whose cause is the disk being full (the shards' messages, native
    libraries' included, all say ENOSPC); otherwise the exception's type and message."""
    text = f"{type(e).__name__}: {e}"
    if _disk_full(e) or "[Errno 28]" in text or "No space left on device" in text:
        return f"the disk holding {root} is full (No space left on device); free space there"
    return text


def _disk_full(e: BaseException | None) -> bool:
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _lifetime(hint: str):
    """Whatever the command starts (Prefect server, Ray, verifier workers) ends with it, and
    SIGTERM/Ctrl-C stop it within seconds, printing ``hint`` (``infra.lifetime``)."""
    from infra import lifetime

    return lifetime.guard(hint, notify=lambda text: console.print(text, style="yellow", markup=False, highlight=False, soft_wrap=True))


def _data_root(option: Optional[str], config_root: str | None = None) -> AnyPath:
    """--data-root, else $SPHERE_DATA_ROOT, else the config's data_root, else ``data``: a local
    folder or an object-store URI (``infra.fs``); a malformed URI is one red message, exit 2."""
    try:
        root = as_path(option or os.environ.get("SPHERE_DATA_ROOT") or config_root or "data").resolve()
        return root.check_reachable() if is_uri(root) else root
    except StoreError as e:
        console.print(f"[red]{e}[/red]", soft_wrap=True)
        raise typer.Exit(2)


def _hold(ctx: typer.Context, lock) -> None:
    """Hold a writer lock (``infra.locks``) until the command ``ctx`` ends; when another process
    holds it, one message naming that process and exit code 3, at once."""
    try:
        ctx.with_resource(lock)
    except WriterLocked as e:
        console.print(f"[red]{e}[/red]", soft_wrap=True)
        raise typer.Exit(3)


def _readable(record: Path, repair: str) -> None:
    """Check a sweep's record before its flow starts: a damaged one is one
    message (exit 2) here rather than a failed flow run."""
    if record.is_file():
        try:
            read_json(record, repair)
        except StorageError as e:
            console.print(f"[red]{e}[/red]", soft_wrap=True)
            raise typer.Exit(2)


def _run_dir(run_id: str, data_root: Optional[str]) -> str:
    try:
        return str(RunStore.open(_data_root(data_root), run_id).run_dir)
    except RunNotFound as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2)


@app.command()
def rerun(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="The run to rerun a stage of."),
    stage: str = typer.Option(..., "--stage", help="One of: " + " | ".join(declared.names()) + " (it and everything downstream rerun)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    sets: list[str] = typer.Option([], "--set", help="Change a config field for this rerun: --set self_correction.shard_size=10."),
) -> None:
    """Re-execute one stage and everything downstream of it from the stored upstream Parquet.

    Finished upstream stages are not touched. The stage's previous outputs are moved to
    _superseded/ in the run directory, and config changes are logged to reruns.jsonl.
    """
    from flows.pipeline import sphere_rerun

    if stage not in declared.names():
        raise typer.BadParameter(f"unknown stage {stage!r}; stages: {', '.join(declared.names())}")
    run_dir = _run_dir(run_id, data_root)
    _hold(ctx, run_lock(run_dir))
    try:
        RunStore.at(run_dir).load_config()
    except StorageError as e:  # a damaged config.json: nothing to rerun from
        console.print(f"[red]{e}[/red]", soft_wrap=True)
        raise typer.Exit(2)
    try:
        with _lifetime(f"finished shards are kept; run it again: sphere rerun {run_id} --stage {stage} --data-root {_data_root(data_root)}"):
            summary = sphere_rerun(run_dir=run_dir, stage=stage, overrides=_parse_sets(sets) or None)
    except Exception as e:
        console.print(f"[red]rerun of {stage} failed: {type(e).__name__}: {e}[/red]")
        raise typer.Exit(1)
    stdout.print(f"rerun of {stage} finished: " + ", ".join(f"{k}={v}" for k, v in summary["counts"].items()))


@app.command()
def export(
    run_id: str = typer.Argument(..., help="The run to export."),
    fmt: str = typer.Option(..., "--format", help="dpo (prompt, chosen, rejected) | step_dpo (the same, one step each after a shared prefix) | sft (prompt, completion)"),
    to: str = typer.Option(..., "--to", help="Local folder to write <format>.jsonl, <format>.parquet and the dataset card README.md into."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    chat: bool = typer.Option(False, "--chat", help="Conversational format: prompt/chosen/rejected/completion as message lists."),
    allow_incomplete: bool = typer.Option(False, "--allow-incomplete", help="Export a run whose stages have not all finished."),
) -> None:
    """Write trainer-ready files (TRL DPOTrainer / SFTTrainer column names), JSONL and Parquet, and
    the folder's dataset card (README.md): datasets.load_dataset(FOLDER) loads it, one config per
    format exported there from the run.

    A run whose stages have not all finished, or that is damaged or incomplete (a marker
    unreadable or missing), is refused naming what is wrong (the files would silently lack
    rows) unless --allow-incomplete is given."""
    from tasks.export import COLUMNS

    if fmt not in COLUMNS:
        raise typer.BadParameter(f"--format must be one of {', '.join(COLUMNS)}, not {fmt!r}")
    if is_uri(to):
        raise typer.BadParameter(f"--to {to}: an export is written to a local folder (the dataset hub's upload, or a copy "
                                 "to the bucket, takes it from there); the run itself may be on an object store")
    run_dir = _run_dir(run_id, data_root)
    with snapshot(run_dir):  # an object store: one listing of the run, each record read once
        _export(run_id, run_dir, fmt, to, chat, allow_incomplete)


def _export(run_id: str, run_dir: str, fmt: str, to: str, chat: bool, allow_incomplete: bool) -> None:
    from flows.pipeline import unfinished_stages
    from tasks.export import ExportError, export_run

    try:
        missing = unfinished_stages(run_dir)
    except StorageError as e:  # a damaged config.json
        console.print(f"[red]{e}[/red]", soft_wrap=True)
        raise typer.Exit(2)
    problems = [p for p in integrity.check(RunStore.at(run_dir)) if p.path.name != "status.json"]
    if problems and not allow_incomplete:
        console.print(f"[red]run {run_id} is damaged or incomplete, so the export would silently lack rows: "
                      f"{integrity.summary(problems, 10)}. Or pass --allow-incomplete.[/red]", soft_wrap=True)
        raise typer.Exit(2)
    if missing and not allow_incomplete:
        console.print(f"[red]run {run_id} is not finished: stages {', '.join(missing)} have not completed. Finish it with "
                      f"`sphere run --resume {run_id}`, or pass --allow-incomplete.[/red]")
        raise typer.Exit(2)
    try:
        paths = export_run(as_path(run_dir), fmt, Path(to), chat=chat)
    except StorageError as e:  # --allow-incomplete over a damaged shard
        console.print(f"[red]{e}[/red]", soft_wrap=True)
        raise typer.Exit(1)
    except ExportError as e:  # --to a file, a read-only or full place: nothing was left there
        console.print(f"[red]{e}[/red]", soft_wrap=True)
        raise typer.Exit(2)
    for p in paths:
        stdout.print(f"wrote {p}")


@app.command()
def report(
    run_id: str = typer.Argument(..., help="The run to report on."),
    compare: list[str] = typer.Option([], "--compare", help="Other run ids to compare with (repeatable): adds the quality-diversity plane."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default: <run>/report.html or <run>/compare-N-runs.html)."),
) -> None:
    """Write a self-contained HTML QDC report (plots embedded) and print its tables."""
    from tasks.report import ReportError, build_report, summary_tables

    dirs = [_run_dir(r, data_root) for r in (run_id, *compare)]
    try:
        path, runs = build_report(dirs, out)
    except (ReportError, StorageError) as e:
        console.print(f"[red]{e}[/red]", soft_wrap=True)
        raise typer.Exit(1)
    for t in summary_tables(runs):
        Console(width=max(Console().width, 160)).print(t)
    stdout.print(f"report: {path}")


@app.command()
def sweep(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="Run config YAML; its seeds are shared by every point."),
    grid: list[str] = typer.Option(..., "--grid", help="field=v1,v2,... (repeatable; the sweep runs the cartesian product), "
                                   "e.g. --grid search.temperature=0.3,0.8,1.5 --grid search.candidates=3,6"),
    n: Optional[int] = typer.Option(None, "--n", help="Override the number of built-in problems (seeds.n)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Override data_root from the config."),
    sets: list[str] = typer.Option([], "--set", help="Override a config field for every point (repeatable)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Resume this sweep id (finished runs are kept)."),
) -> None:
    """Run the same seeds under several settings and compare them in one report."""
    from flows.sweep import REPAIR, SweepError, new_sweep_id, sphere_sweep

    parsed: dict[str, list] = {}
    for g in grid:
        if "=" not in g:
            raise typer.BadParameter(f"--grid {g!r}: expected field=v1,v2,...")
        k, v = g.split("=", 1)
        parsed[k.strip()] = [_parse_sets([f"x={x}"])["x"] for x in v.split(",") if x.strip()]
    overrides, cfg, root = _setup(config, n, sets, data_root)
    sweep_id, grids = resume or new_sweep_id(cfg.name), " ".join(f"--grid {g}" for g in grid)
    _hold(ctx, writer_lock(root / "sweeps" / f"{sweep_id}.lock", f"sweep {sweep_id}"))
    _readable(root / "sweeps" / f"{sweep_id}.json", REPAIR)
    console.print(f"sweep id: [bold]{sweep_id}[/bold] ({len(parsed)} fields)")
    try:
        with _lifetime(_resume(f"sweep {config}", sweep_id, root, kept="runs", tail=f" {grids}")):
            record = sphere_sweep(config_path=str(config), grid=parsed, sweep_id=sweep_id, data_root=str(root), overrides=overrides)
    except (SweepError, ConfigError) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2)
    except Exception as e:
        console.print(f"[red]sweep {sweep_id} failed: {type(e).__name__}: {e}[/red]")
        console.print(f"finished runs are kept; resume with: sphere sweep {config} --resume {sweep_id} {grids}")
        raise typer.Exit(1)
    from tasks.report import load_run, summary_tables

    runs = [load_run(root / "runs" / r["run_id"]) for r in record["runs"]]
    for t in summary_tables(runs)[-1:]:
        Console(width=max(Console().width, 160)).print(t)
    stdout.print(f"report: {record['report']}")


class _HideRunErrors:
    """Console-handler filter: Prefect's error records of flow and task runs (tracebacks) stay out
    of the terminal, where the command prints the failure itself in one message; the Prefect
    API (the UI) still gets them."""

    def filter(self, record) -> bool:
        return not (record.levelno >= 40 and record.name.startswith(("prefect.flow_runs", "prefect.task_runs")))


@contextmanager
def _errors_reported_here():
    import logging

    handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "PrefectConsoleHandler"]
    hide = _HideRunErrors()
    for h in handlers:
        h.addFilter(hide)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(hide)


def _check_evolve_resume(root: Path, evolve_id: str, cfg, allow: bool) -> None:
    """Refuse, before any work, a resume whose record is damaged or (without ``allow``) names
    another config than the one the evolve was started with (``tasks.evolve_record``); the
    record is known to exist."""
    from flows.evolve import REPAIR
    from tasks.evolve_record import EvolveConfigChanged, settle_config

    path = root / "evolve" / f"{evolve_id}.json"
    try:
        record = read_json(path, REPAIR)
        settle_config(record, cfg.model_dump(mode="json"), allow=allow, next_round=sum(1 for r in record["rounds"] if r.get("finished")))
    except (ValueError, KeyError, TypeError, StorageError) as e:
        why = str(e) if isinstance(e, (EvolveConfigChanged, StorageError)) else f"its record {path} is damaged ({type(e).__name__}: {e})"
        console.print(f"evolve {evolve_id} cannot resume: {why}", style="red", soft_wrap=True, markup=False, highlight=False)
        raise typer.Exit(2)


@app.command()
def evolve(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="Run config YAML of every round (its policy is round 0's; train/evaluate sections apply)."),
    rounds: int = typer.Option(2, "--rounds", help="Rounds to run (generate -> train -> evaluate each); at least 1."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Resume this evolve id: finished rounds are kept, the unfinished "
                                          "round resumes from its last committed shard (training from its last epoch)."),
    n: Optional[int] = typer.Option(None, "--n", help="Override the number of built-in problems per round (seeds.n)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Override data_root from the config (or $SPHERE_DATA_ROOT)."),
    sets: list[str] = typer.Option([], "--set", help="Override a config field of every round: --set train.method=sft (repeatable)."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change", help="With --resume: run the remaining rounds with "
                                             "this config even though it differs from the evolve's stored one (the change is "
                                             "recorded in the evolve record)."),
) -> None:
    """Self-evolution: each round runs the factory with the current policy, trains the next one on
    the round's pairs and evaluates it on held-out problems (accuracy with 95% CIs). A round's
    model becomes the next policy only if its training did not diverge and it is not
    significantly worse than its parent (evolve.require_not_worse); otherwise the evolve stops."""
    if rounds < 1:
        console.print(f"[red]--rounds must be at least 1, got {rounds}[/red]", soft_wrap=True)
        raise typer.Exit(2)
    from flows.evolve import EvolveError, RoundRejected, new_evolve_id, sphere_evolve
    from infra.trainers import TrainError

    overrides, cfg, root = _setup(config, n, sets, data_root, forced={"train.enabled": True, "evaluate.enabled": True})
    evolve_id = resume or new_evolve_id(cfg.name)
    if resume and not (root / "evolve" / f"{resume}.json").is_file():
        console.print(f"[red]evolve {resume!r} not found under {root / 'evolve'}[/red]")
        raise typer.Exit(2)
    _hold(ctx, writer_lock(root / "evolve" / f"{evolve_id}.lock", f"evolve {evolve_id}"))
    if resume:  # a new id has no record yet; a resumed one is read once, here
        _check_evolve_resume(root, resume, cfg, allow_config_change)
    console.print(f"evolve id: [bold]{evolve_id}[/bold] ({rounds} rounds; data: {root})")
    hint = _resume(f"evolve {config} --rounds {rounds}", evolve_id, root, kept="rounds")
    try:
        with _lifetime(hint), _errors_reported_here(), _progress():
            record = sphere_evolve(config_path=str(config), rounds=rounds, evolve_id=evolve_id, data_root=str(root), overrides=overrides,
                                   allow_config_change=allow_config_change)
    except RoundRejected as e:  # the record keeps the parent; resuming with the same config would stop the same way
        console.print(f"evolve {evolve_id} stopped: {e}", style="red", soft_wrap=True, markup=False, highlight=False)
        raise typer.Exit(1)
    except (EvolveError, TrainError, ValueError) as e:
        console.print(f"evolve {evolve_id} stopped: {e}", style="red", soft_wrap=True, markup=False, highlight=False)
        console.print(f"resume with: {_resume(f'evolve {config} --rounds {rounds}', evolve_id, root)}", soft_wrap=True)
        raise typer.Exit(2 if isinstance(e, ValueError) and not isinstance(e, EvolveError) else 1)
    except Exception as e:
        console.print(f"evolve {evolve_id} failed: {_failure(e, root)}", style="red", soft_wrap=True, markup=False, highlight=False)
        console.print(hint, soft_wrap=True)
        raise typer.Exit(1)
    stdout.print(_accuracy_table(record, evolve_id))
    for key, label in (("comparisons", ""), ("comparisons_ood", " (OOD)")):
        for c in record.get(key, []):  # every model against the one its round started from
            stdout.print(f"McNemar model {c['to_round']} vs {c['from_round']}{label}: {c['b_only']} fixed, {c['a_only']} broken, "
                         f"p = {c['p_value']:.2g} (n = {c['n']})", soft_wrap=True)
    c = record.get("comparison") or {}
    if c:
        stdout.print(f"McNemar round {c['from_round']} vs {c['to_round']}: {c['b_only']} fixed, {c['a_only']} broken, "
                     f"p = {c['p_value']:.2g} (n = {c['n']})", soft_wrap=True)
    stdout.print(f"report: {record['report']}", soft_wrap=True)


def _accuracy_table(record: dict, evolve_id: str) -> Table:
    """Held-out greedy accuracy per round: in-distribution, the out-of-distribution set when the
    evolve has one, and the reference model's row (``evaluate.reference``) last. One line per
    model at 80 columns (accuracy and its 95% CI in one cell)."""
    from rich import box

    from flows.evolve import accuracy_by_round, reference_accuracy
    from tasks.evaluate import is_ood

    ood = {a["round"]: a for a in accuracy_by_round(record, ood=True)}
    t = Table(title=f"Held-out greedy accuracy per round ({evolve_id})", box=box.SIMPLE_HEAD, show_edge=False)
    for col in ("round", "model", "accuracy (95% CI)", "n") + (("OOD accuracy (95% CI)",) if ood else ()):
        t.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)

    def cell(a: dict | None) -> str:
        return f"{a['accuracy']:.3f} ({a['ci_low']:.3f}-{a['ci_high']:.3f})" if a else ""

    for a in accuracy_by_round(record):
        t.add_row(str(a["round"]), a["model"], cell(a), str(a["n"]), *([cell(ood.get(a["round"]))] if ood else []))
    ref = reference_accuracy(record)
    ref_id = next((r for r in ref if not is_ood(r["dataset"])), None)
    if ref_id:
        ref_ood = next((r for r in ref if is_ood(r["dataset"])), None)
        t.add_row("ref", ref_id["model"], cell(ref_id), str(ref_id["n"]), *([cell(ref_ood)] if ood else []))
    return t


@app.command()
def server(
    host: str = typer.Option("127.0.0.1", "--host", help="Address the Prefect server listens on."),
    port: int = typer.Option(4200, "--port", help="Port of the API and UI."),
    ui: bool = typer.Option(True, "--ui/--no-ui", help="Serve the Prefect UI."),
) -> None:
    """Start a local Prefect server (API + UI) with the offline settings this project uses.

    Then, in other shells: `export PREFECT_API_URL=http://HOST:PORT/api`,
    `prefect work-pool create sphere-local --type process`, the same for `sphere-gpu`,
    `prefect deploy --all`, `prefect worker start --pool sphere-local` (README, "Deployments").
    """
    from infra.env import offline_defaults

    env = {**offline_defaults(), **os.environ, "PREFECT_UI_ENABLED": "true" if ui else "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    console.print(f"Prefect server on http://{host}:{port} (API: http://{host}:{port}/api; PREFECT_HOME={env['PREFECT_HOME']})")
    exe = Path(sys.executable).with_name("prefect")
    os.execve(str(exe), [str(exe), "server", "start", "--host", host, "--port", str(port)], env)


@app.command("check-config")
def check_config(config: Path = typer.Argument(..., help="Config YAML to validate.")) -> None:
    """Validate a config file and print it with all defaults filled in."""
    _, cfg, _ = _setup(config, None, [], None, check=True)
    sys.stdout.write(json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
