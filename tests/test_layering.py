"""The import graph follows the intended layers (../shared/GUIDE.md, "The house"; docs/architecture.md),
bottom up:

    utils -> autosparse, data, models -> compressors -> runspec -> engine -> trainers -> launch -> main
                                                        runspec -> sweeps, reporting (readers of run folders)
                                                        runspec -> export (rebuilds runs' models) -> main

A module may import its own package and the packages allowed below; nothing reaches up or sideways.
No module imports a private (underscore) name of another package's or module's internals either.

Imports that plugin discovery makes count too: a ``Registry(..., plugins="pkg")`` imports every module of
``pkg`` on its first lookup, and ``importlib.import_module("pkg...")`` imports ``pkg``; both are edges of
the graph, checked like ``import`` statements.  The one edge that runs up is declared in
:data:`DISCOVERS`, with its reason: the run specification reads the experiments' own option classes
(``training.<section>``) from the experiment registry, whose plugins are the trainers.

Walks every file with ast, so it fails the moment a file gains a wrong arrow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOW = {"utils"}
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "autosparse": LOW,
    "data": LOW,
    "models": LOW,
    "compressors": LOW | {"autosparse"},
    "runspec": LOW | {"data", "models", "compressors"},
    "engine": LOW | {"data", "models", "compressors", "runspec"},
    "trainers": LOW | {"autosparse", "data", "models", "compressors", "runspec", "engine"},
    "launch": LOW | {"runspec", "engine"},
    "sweeps": LOW | {"runspec"},
    "reporting": LOW | {"runspec", "compressors"},
    "export": LOW | {"data", "models", "compressors", "runspec"},  # reads run folders, rebuilds their models
}
# declared upward edges made by plugin discovery only (never by an import statement): (file, package) -> why
DISCOVERS: dict[tuple[str, str], str] = {
    ("runspec/spec.py", "trainers"): "the experiment registry: RunSpec parses training.<section> with the "
                                     "Options an experiment declares",
}
PROJECT = set(ALLOWED) | {"main", "benchmarks", "tests"}


def _literal(node: ast.AST, module: str) -> str | None:
    """The module name a discovery argument names: a string constant, or ``__name__`` (this module)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id == "__name__":
        return module
    return None


def imports(path: Path, module: str = "") -> list[tuple[int, str, list[str], bool]]:
    """(line, imported module, imported names, made by discovery) of every absolute import in ``path``:
    ``import`` statements, ``Registry(..., plugins=...)`` and ``import_module(...)`` calls."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, [], False) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names], False))
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            args = [k.value for k in node.keywords if k.arg == "plugins"] if name == "Registry" else \
                node.args[:1] if name == "import_module" else []
            out += [(node.lineno, target, [], True) for a in args if (target := _literal(a, module))]
    return out


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            for line, imported, names, discovery in imports(path, module):
                top = imported.split(".")[0]
                where = f"{rel}:{line}"
                how = "discovers plugins in" if discovery else "imports"
                declared = discovery and (rel.as_posix(), top) in DISCOVERS
                if top in PROJECT and top != package and top not in allowed and not declared:
                    bad.append(f"{where} {how} {imported} ({package} may import only {sorted(allowed) or 'itself'})")
                private = [n for n in names if n.startswith("_") and n != "__version__"]
                if top in PROJECT and private and imported != module:
                    bad.append(f"{where} imports private {private} from {imported}")
    return bad


def test_no_import_runs_up_or_sideways() -> None:
    assert violations() == []


def test_every_declared_discovery_edge_exists() -> None:
    """A declaration outlives its edge only by mistake: each one is still made by its file."""
    for (file, package), _why in DISCOVERS.items():
        module = file.removesuffix(".py").replace("/", ".")
        assert any(d and m.split(".")[0] == package for _, m, _, d in imports(ROOT / file, module)), (file, package)


@pytest.mark.parametrize("package,line", [
    ("utils", "import trainers"), ("compressors", "from data import get"), ("models", "import compressors"),
    ("runspec", "from engine import Run"), ("data", "from trainers.pbt import _private"),
    # upward imports made through plugin discovery
    ("compressors", "REGISTRY = Registry('thing', plugins='engine')"),
    ("data", "import importlib\nimportlib.import_module('launch.runner')"),
    ("runspec", "EXTRA = Registry('hook', plugins='launch')"),
])
def test_a_wrong_arrow_is_caught(tmp_path: Path, package: str, line: str) -> None:
    """The check itself can fail: a copy of the tree with one bad import added is flagged."""
    for pkg in ALLOWED:
        (tmp_path / pkg).mkdir()
    (tmp_path / package / "bad.py").write_text(line + "\n")
    found = violations(tmp_path)
    assert len(found) >= 1 and all("bad.py:" in v for v in found)


def test_the_declared_discovery_edge_is_allowed_only_where_declared(tmp_path: Path) -> None:
    """runspec/spec.py may discover the trainers; the same line in another runspec file is an upward edge."""
    for pkg in ALLOWED:
        (tmp_path / pkg).mkdir()
    line = "EXPERIMENTS = Registry('experiment', plugins='trainers')\n"
    (tmp_path / "runspec" / "spec.py").write_text(line)
    assert violations(tmp_path) == []
    (tmp_path / "runspec" / "other.py").write_text(line)
    assert violations(tmp_path) == ["runspec/other.py:1 discovers plugins in trainers (runspec may import only "
                                    "['compressors', 'data', 'models', 'utils'])"]
