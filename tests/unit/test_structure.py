"""The code's shape: imports flow one way (flows -> tasks -> infra), with no circle, and no
module needs an import waiver below an environment call."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

from tasks.code_version import PACKAGES, _modules as _project_modules


def _modules() -> dict[str, Path]:
    """Every project module: dotted name -> file (the one walker ``tasks.code_version`` uses)."""
    return dict(_project_modules(ROOT))


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported by ``path`` anywhere in it (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
    return found


def test_infra_imports_nothing_from_tasks_or_flows_and_tasks_nothing_from_flows():
    modules = _modules()
    for name, path in modules.items():
        deps = _imports(path, modules)
        if name.startswith("infra"):
            assert not [d for d in deps if d.split(".")[0] in ("tasks", "flows")], f"{name} imports {deps}"
        if name.startswith("tasks"):
            assert not [d for d in deps if d.split(".")[0] == "flows"], f"{name} imports {deps}"


def test_the_module_import_graph_has_no_circle():
    modules = _modules()
    graph = {m: {d for d in _imports(p, modules) if d != m and not m.startswith(d + ".") and d not in PACKAGES}
             for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            assert state.get(d) != 1, "import circle: " + " -> ".join([*path, m, d])
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_no_import_waivers_in_product_code():
    offenders = [f"{f.relative_to(ROOT)}:{i}" for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py")
                 for i, line in enumerate(f.read_text().splitlines(), 1) if "noqa: E402" in line]
    assert offenders == []


def test_importing_any_package_applies_the_offline_environment():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "RAY_AUTH_MODE", "GX_ANALYTICS_ENABLED")}
    for pkg in PACKAGES:
        out = subprocess.run([sys.executable, "-c", f"import {pkg}, os; print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('RAY_AUTH_MODE'))"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert out.stdout.split() == ["1", "disabled"], (pkg, out.stderr[-500:])
