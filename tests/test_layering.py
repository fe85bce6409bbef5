"""The import graph follows the intended layers (../shared/GUIDE.md, "The house"), bottom up:

    utils -> autosparse, data, models -> compressors -> spec -> engine -> trainers -> launch -> main
                                                     spec -> sweeps, reporting (readers of run folders)
                                                     spec -> export (rebuilds runs' models) -> main

A module may import its own package and the packages allowed below; nothing reaches up or sideways.
No module imports a private (underscore) name of another package's or module's internals either.
Walks every ``import`` statement with ast, so it fails the moment a file gains a wrong arrow."""

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
    "spec": LOW | {"data", "models", "compressors"},
    "engine": LOW | {"data", "models", "compressors", "spec"},
    "trainers": LOW | {"autosparse", "data", "models", "compressors", "spec", "engine"},
    "launch": LOW | {"spec", "engine"},
    "sweeps": LOW | {"spec"},
    "reporting": LOW | {"spec", "compressors"},
    "export": LOW | {"data", "models", "compressors", "spec"},  # reads run folders, rebuilds their models
}
PROJECT = set(ALLOWED) | {"main", "benchmarks", "tests"}


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) of every absolute import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, module, names in imports(path):
                top = module.split(".")[0]
                where = f"{path.relative_to(root)}:{line}"
                if top in PROJECT and top != package and top not in allowed:
                    bad.append(f"{where} imports {module} ({package} may import only {sorted(allowed) or 'itself'})")
                private = [n for n in names if n.startswith("_") and n != "__version__"]
                if top in PROJECT and private and module != ".".join(path.relative_to(root).with_suffix("").parts[:-1]
                                                                    + (path.stem,)):
                    bad.append(f"{where} imports private {private} from {module}")
    return bad


def test_no_import_runs_up_or_sideways() -> None:
    assert violations() == []


@pytest.mark.parametrize("package,line", [("utils", "import trainers"), ("compressors", "from data import get"),
                                          ("models", "import compressors"), ("spec", "from engine import Run"),
                                          ("data", "from trainers.pbt import _private")])
def test_a_wrong_arrow_is_caught(tmp_path: Path, package: str, line: str) -> None:
    """The check itself can fail: a copy of the tree with one bad import added is flagged."""
    for pkg in ALLOWED:
        (tmp_path / pkg).mkdir()
    (tmp_path / package / "bad.py").write_text(line + "\n")
    found = violations(tmp_path)
    assert len(found) >= 1 and all("bad.py:1" in v for v in found)
