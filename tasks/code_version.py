"""The code version of a stage: a hash of exactly the code and behaviour files its task can reach.

``reached(module)`` is the transitive closure of project-internal imports (packages
``flows``, ``tasks``, ``infra``) from ``module``, found with ``ast``: every ``import`` and
``from ... import`` anywhere in a module (top level or inside a function, so lazily imported
backends count), plus the packages whose ``__init__`` an import runs. ``code_version(module)``
hashes those modules and the files they read at run time that define behaviour
(``RUNTIME_FILES``: prompt templates, the tiny models, the worker requirements).

A module counts by its syntax tree with docstrings removed (``ast.dump``), not its bytes:
a docstring, comment or formatting fix changes no code version, so it recomputes nothing on
resume; any other edit of a reached module does. Editing a module no stage reaches (e.g.
``tasks/report.py``) changes no stage's code version. Imports by string (``importlib``) are
not seen: a module loaded that way must be imported by name somewhere the stage reaches, or
named in ``RUNTIME_FILES``. A stage whose function lives outside the packages (a test's toy
stage) counts by its own file plus the project modules it reaches. Results are cached per process (the code does not change under
a running process).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import threading
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "tasks", "infra")
DATA_SUFFIXES = (".txt", ".pt", ".json", ".safetensors")
# module -> folders (relative to the project root) of the files it reads at run time that define behaviour
RUNTIME_FILES: dict[str, tuple[str, ...]] = {
    "infra.prompts": ("infra/prompts",),  # load_template reads <name>.txt
    "infra.backends.tiny": ("infra/models",),  # the named tiny checkpoints
    "infra.worker_env": ("infra/worker",),  # the worker environments' requirements
}


@functools.cache
def _modules(root: Path) -> dict[str, Path]:
    """Every project module under ``root``: dotted name -> file."""
    out = {}
    for pkg in PACKAGES:
        for f in (root / pkg).rglob("*.py"):
            parts = f.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _with(module: str, root: Path) -> dict[str, Path]:
    """The project's modules, plus ``module`` itself when it is an importable module outside the
    packages (a stage declared elsewhere, e.g. by a test): it counts by its own file and the
    project modules it imports. ValueError for anything else."""
    modules = _modules(root)
    if module in modules or module.partition(".")[0] in PACKAGES:
        if module not in modules:
            raise ValueError(f"{module!r} is not a module of {', '.join(PACKAGES)} under {root}")
        return modules
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not (spec.origin or "").endswith(".py"):
        raise ValueError(f"{module!r} is neither a module of {', '.join(PACKAGES)} under {root} nor an importable Python file")
    return {**modules, module: Path(spec.origin)}


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


# CPython 3.11's ast keeps one interpreter-wide recursion counter: two threads building or
# parsing trees at once can fail with "SystemError: AST constructor recursion depth mismatch"
# (seen in a run: shard tasks fingerprint in Prefect's worker threads). Every parse here holds it.
AST_LOCK = threading.RLock()


@functools.cache
def _tree(path: Path) -> ast.Module:
    with AST_LOCK:
        return ast.parse(path.read_text(), str(path))


def _imports(name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules that module ``name`` imports anywhere in it, with their parent packages."""
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(_tree(path)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n:
                found.update([n, *(p for p in _parents(n) if p in modules)])
    return found


def reached(module: str, root: Path = PROJECT_ROOT) -> tuple[str, ...]:
    """Sorted names of the project modules ``module`` reaches through imports (itself included)."""
    modules = _with(module, root)
    seen: set[str] = set()
    todo = [module, *(p for p in _parents(module) if p in modules)]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += sorted(_imports(m, modules) - seen)
    return tuple(sorted(seen))


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    """A copy of ``tree`` without docstrings (the first string statement of a module, class or function)."""
    with AST_LOCK:
        tree = ast.parse(ast.unparse(tree))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.cache
def module_digest(path: Path) -> str:
    """Hash of a module's code: its syntax tree without docstrings (comments and layout never count)."""
    with AST_LOCK:
        return hashlib.sha256(ast.dump(_strip_docstrings(_tree(path))).encode()).hexdigest()


@functools.cache
def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def runtime_files(modules: tuple[str, ...], root: Path = PROJECT_ROOT) -> list[Path]:
    """The behaviour-defining data files that the reached ``modules`` read at run time (``RUNTIME_FILES``)."""
    out = []
    for m in modules:
        for folder in RUNTIME_FILES.get(m, ()):
            out += [f for f in (root / folder).rglob("*") if f.suffix in DATA_SUFFIXES and "__pycache__" not in f.parts]
    return sorted(set(out))


@functools.cache
def code_version(module: str, root: Path = PROJECT_ROOT) -> str:
    """Hash of the code a stage whose task lives in ``module`` can run: every reached module
    (docstrings removed) and the runtime files they read. Part of every shard fingerprint."""
    h = hashlib.sha256()
    mods, files = reached(module, root), _with(module, root)
    for m in mods:
        h.update(f"{m}\0{module_digest(files[m])}\0".encode())
    for f in runtime_files(mods, root):
        h.update(f"{f.relative_to(root).as_posix()}\0{_file_digest(f)}\0".encode())
    return h.hexdigest()[:16]
