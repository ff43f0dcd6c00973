"""The project's import graph, read from the source with ``ast``: which project modules a module runs.

A cache key's code version must change when any code that a stage runs changes, not only the
modules someone remembered to list. The graph is computed from the files, without importing
them (importing would run them, and could not see an edit made after the first import), and it
is conservative: every import counts, wherever it is written (inside functions, under
``if TYPE_CHECKING``, ``importlib.import_module("a.literal")``), and importing a submodule counts
its packages' ``__init__.py`` too, since Python runs them first.

Project modules are those of the top-level package folders (with ``__init__.py``) in the project
root, the folder that holds this package; everything else (the standard library, third-party
packages) is outside the graph. This module imports nothing from the project: it is ground.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "pretrain-pipeline"

# Package data that is configuration, not code: the shipped recipes reach a cache key through the
# config values they give (editing local.yaml's tokenize section must rerun tokenize, not ingest).
NOT_CODE = frozenset({"pretrain/recipes"})

# path -> ((size, mtime_ns), the absolute module names its imports may refer to)
_IMPORTS: dict[Path, tuple[tuple[int, int], tuple[str, ...]]] = {}


def project_packages(root: Path = ROOT) -> frozenset[str]:
    """The top-level project packages: package folders in a source tree, or those our wheel installed."""
    if (root / "pyproject.toml").is_file():
        return frozenset(entry.name for entry in os.scandir(root)
                         if entry.is_dir() and (Path(entry.path) / "__init__.py").is_file())
    return _installed_packages(root)


@functools.cache
def _installed_packages(root: Path) -> frozenset[str]:
    """In an installed copy the root is site-packages: only the packages our distribution owns count."""
    owners = importlib.metadata.packages_distributions()
    return frozenset(top for top, dists in owners.items()
                     if DISTRIBUTION in dists and (root / top / "__init__.py").is_file())


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file Python would load for module ``name`` under ``root`` (a package before a module), or None."""
    base = os.path.join(root, *name.split("."))
    for candidate in (os.path.join(base, "__init__.py"), base + ".py"):
        if os.path.isfile(candidate):
            return Path(candidate)
    return None


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, root: Path = ROOT) -> tuple[str, ...]:
    """The absolute names the file's imports may refer to, parsed once per (path, size, mtime_ns).

    ``from a import b`` yields ``a`` and ``a.b`` (b may be a submodule or only an attribute: the
    closure keeps it if a file resolves). The stat key makes an edit visible to a running process.
    """
    stat = path.stat()
    key = (stat.st_size, stat.st_mtime_ns)
    cached = _IMPORTS.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    names = tuple(sorted(_parse_imports(path.read_bytes(), module_name(path, root), path.name == "__init__.py")))
    _IMPORTS[path] = (key, names)
    return names


def _parse_imports(source: bytes, name: str, is_package: bool) -> set[str]:
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module or "", node.level, package)
            if base:
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and (target := _import_call_target(node, package)):
            found.add(target)
    return found


def _absolute(module: str, level: int, package: str) -> str | None:
    """``from ..x import y``'s base as an absolute name (None when it climbs above the top)."""
    if level == 0:
        return module
    parts = package.split(".") if package else []
    if level - 1 > len(parts) - 1:
        return None
    base = parts[:len(parts) - (level - 1)]
    return ".".join([*base, module] if module else base) or None


def _import_call_target(node: ast.Call, package: str) -> str | None:
    """The module named by ``importlib.import_module("lit")`` / ``import_module(".lit", "pkg")`` /
    ``__import__("lit")``, when its name is a string literal."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return None
    name = first.value
    if not name.startswith("."):
        return name
    anchor = _literal_package(node) or package
    level = len(name) - len(name.lstrip("."))
    return _absolute(name.lstrip("."), level, anchor)


def _literal_package(node: ast.Call) -> str | None:
    given = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "package"), None)
    return given.value if isinstance(given, ast.Constant) and isinstance(given.value, str) else None


def module_closure(*names: str, root: Path = ROOT) -> list[str]:
    """The named project modules plus every project module they import, directly or not (sorted).

    A named module that is not a project module raises ModuleNotFoundError (a typo must not key a
    cache on nothing); an imported name that resolves to no file (an attribute, a module that is
    not there) is skipped.
    """
    return sorted(_closure_files(names, project_packages(root), root))


def closure_files(*names: str, root: Path = ROOT) -> dict[str, Path]:
    """``module_closure`` with each module's file, in module-name order."""
    files = _closure_files(names, project_packages(root), root)
    return dict(sorted(files.items()))


def _closure_files(names: tuple[str, ...], packages: frozenset[str], root: Path) -> dict[str, Path]:
    for name in names:
        if name.partition(".")[0] not in packages or module_file(name, root) is None:
            raise ModuleNotFoundError(f"{name} is not a project module under {root}")
    files: dict[str, Path] = {}
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.partition(".")[0] not in packages or (path := module_file(name, root)) is None:
            continue
        files[name] = path
        pending.extend(_parents(name))
        pending.extend(imported_names(path, root))
    return files


def package_data(modules: dict[str, Path]) -> dict[str, Path]:
    """The files shipped inside the packages among ``modules`` that are not modules (word lists, ...).

    Results depend on them as on code (the URL filter's default lists live in tasks/filters/lists/),
    so they join the code version. A package's data is every file in its folder and in its
    subfolders that are not packages themselves; caches, dotfiles, ``.pyc`` and the folders in
    ``NOT_CODE`` are not. Keys read ``package/relative/path``, in order.
    """
    found: dict[str, Path] = {}
    for name, path in modules.items():
        if path.name == "__init__.py":
            found.update(_data_under(path.parent, name, top=True))
    return dict(sorted(found.items()))


def _data_under(folder: Path, prefix: str, top: bool) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if entry.is_dir():
            key = f"{prefix}/{entry.name}"
            if key not in NOT_CODE and not os.path.isfile(os.path.join(entry.path, "__init__.py")):
                found.update(_data_under(Path(entry.path), key, top=False))
        elif not entry.name.endswith(".pyc") and not (top and entry.name.endswith(".py")):
            found[f"{prefix}/{entry.name}"] = Path(entry.path)
    return found


def _parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``: importing a submodule runs its packages' ``__init__.py`` first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
