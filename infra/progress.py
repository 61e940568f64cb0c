"""Progress reporting from stages to whoever is watching (the CLI's progress bars).

Flows call ``report(stage, done, total)``; the CLI installs a reporter. Without one (a
Prefect worker, a test) reports go nowhere.
"""

from __future__ import annotations

from typing import Callable

_reporter: Callable[[str, int, int], None] | None = None


def install(fn: Callable[[str, int, int], None] | None) -> None:
    global _reporter
    _reporter = fn


def report(stage: str, done: int, total: int) -> None:
    if _reporter is not None:
        _reporter(stage, done, total)
