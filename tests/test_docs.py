"""The docs stay true: every fenced block of README.md, CHANGELOG.md and docs/**/*.md is run or checked.

How each block is covered (a block takes its rule from its language; an HTML comment on the line right
before the fence, ``<!-- check: ... -->``, picks another rule):

- ``bash`` / ``console`` (``$ `` lines of a console block): every command line is checked.  ``main.py``
  commands are parsed by ``main.build_parser()`` (or ``main.official_parser()``), so every flag must exist,
  and the config files, folders and reference files they read must exist in the repository (an ALL-CAPS
  word is a placeholder; paths under the output roots of earlier commands, :data:`OUTPUT_ROOTS`, are what
  those commands wrote).  Other tools follow a named rule (:data:`TOOLS`): a script must exist (and pass
  ``bash -n`` or name only flags its source declares), ``pip -r`` files must exist, a ``-m`` module must be
  importable, and so on; a tool without a rule fails.  ``check: run`` blocks are also *executed* in a
  sandbox (a temporary folder holding a copy of ``exp_configs/`` whose digits configs are cut to a few
  batches, and ``docs/``): README.md's before every other check (its run folder is reused by the rest),
  each other page's in its own test.  ``check: with-plugin`` blocks are executed while the plugin
  template above them is dropped into its folder.
- ``json``: a config (complete or partial: omitted fields take their defaults) checked by
  ``runspec.RunSpec.from_dict`` (a problem saying only that an optional tracker package is not installed
  here does not count); ``check: json-data`` only parses (a file format, not a config).
- ``python``: executed in the sandbox; ``check: excerpt PATH`` blocks must appear, line for line, in that
  file; ``check: plugin KIND`` blocks are dropped into their plugin folder (the file named on their first
  line) and checked as docs/extending.md says; ``check: torch-prune-load`` runs the export snippet against a
  real export of the sandbox's run and compares the plain model with the masked one.
- ``text``: a layout tree; every path in its first column must exist.
- Any other language, or none, fails.

Generated reference tables sit between ``<!-- NAME:start -->`` / ``<!-- NAME:end -->`` and must equal what
the code gives now: ``fields`` (docs/configs.md, ``main.py list --fields``), ``options`` (docs/criteria.md,
every criterion's Options) and ``cli`` (docs/cli.md, the argument parsers).  Regenerate all three with
``.venv/bin/python tests/test_docs.py --write``.

Also: every CLI flag appears somewhere in the docs, README.md holds the two set-up command lines that CI
runs, relative links and their #anchors resolve, docs/README.md lists every page, and the checks catch a
planted mistake (the negative tests at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python tests/test_docs.py --write` runs this file directly
    sys.path.insert(0, str(ROOT))

README_FILE = ROOT / "README.md"
PAGES = sorted([README_FILE, ROOT / "CHANGELOG.md", *(ROOT / "docs").rglob("*.md")])
OUTPUT_ROOTS = {"results", "reports", "my_configs", "exported", "runs", "outputs", "datasets"}
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(\.[a-z]+)?")
PYTHONS = {"python", "python3", ".venv/bin/python"}
FENCE = re.compile(r"^```(\S*)[ \t]*$")
CHECK = re.compile(r"^<!--\s*check:\s*(.+?)\s*-->$")
OPTIONAL_PACKAGE = re.compile(r"needs the \w+ package \(pip install")
GENERATED = {"fields": ROOT / "docs" / "configs.md", "options": ROOT / "docs" / "criteria.md",
             "cli": ROOT / "docs" / "cli.md"}


# ------------------------------------------------------------------------------------------ the blocks
@dataclasses.dataclass
class Block:
    page: Path
    line: int          # line of the opening fence (1-based)
    lang: str
    check: str         # the <!-- check: ... --> directive before the fence, or ""
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(text: str, page: Path) -> list[Block]:
    """Every fenced block of a Markdown text (an unclosed fence is a block up to the end)."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        before = lines[i - 1].strip() if i else ""
        directive = CHECK.match(before)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        out.append(Block(page, i + 1, m.group(1), directive.group(1) if directive else "",
                         "\n".join(lines[i + 1:end]) + "\n"))
        i = end + 1
    return out


ALL_BLOCKS = [b for page in PAGES for b in blocks_of(page.read_text(encoding="utf-8"), page)]


def _blocks(predicate: Callable[[Block], bool]) -> list[Any]:
    return [pytest.param(b, id=b.where) for b in ALL_BLOCKS if predicate(b)]


# ------------------------------------------------------------------------------------- command lines
def command_lines(block: Block) -> list[str]:
    """The command lines of a bash / console block: continuation lines joined, comments dropped."""
    raw = block.text.splitlines()
    if block.lang == "console":
        raw = [line[2:] for line in raw if line.startswith("$ ")]
    joined, current = [], ""
    for line in raw:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    if current:
        joined.append(current)
    return [line for line in joined if line.strip() and not line.strip().startswith("#")]


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one line (split at ``&&``, ``||``, ``;``, ``|``), environment assignments
    in front of a command dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for words in commands:
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


def input_path_problem(path: str) -> str | None:
    """None when ``path`` exists in the repository (globs: matches something), is an ALL-CAPS
    placeholder or lies under an output root of an earlier command."""
    if PLACEHOLDER.fullmatch(path) or Path(path).parts[:1] and Path(path).parts[0] in OUTPUT_ROOTS:
        return None
    if glob.glob(str(ROOT / path)):
        return None
    return f"{path}: no such file or folder in the repository"


def parse_main(argv: list[str]) -> tuple[argparse.Namespace | None, str]:
    """``main.py ARGV`` parsed as the program parses it: (namespace, "") or (None, the parser's error)."""
    import main

    parser = main.official_parser() if argv and argv[0].startswith("--") and argv[0] not in ("-h", "--help") \
        else main.build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv), ""
    except SystemExit:
        return None, err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "argparse error"


def main_problems(argv: list[str]) -> list[str]:
    args, error = parse_main(argv)
    if args is None:
        return [f"main.py {' '.join(argv)}: {error}"]
    inputs: list[str] = []
    if argv and argv[0].startswith("--"):
        inputs = [args.params_path]
    elif args.command in ("run", "validate"):
        inputs = list(args.paths)
    elif args.command == "sweep":
        inputs = [args.base]
    elif args.command in ("report", "status"):
        inputs = [p for p in (args.sweep, getattr(args, "reference", None)) if p]
    elif args.command == "export":
        inputs = [args.run]
    elif args.command == "autos-train":
        inputs = list(args.datasets)
    return [f"main.py {' '.join(argv)}: {p}" for p in map(input_path_problem, inputs) if p]


def _script_problems(script: str, args: list[str]) -> list[str]:
    path = ROOT / script
    if not path.is_file():
        return [f"{script}: no such script"]
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".sh":
        done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        return [f"{script}: bash -n: {done.stderr.strip()}"] if done.returncode else []
    flags = [a.split("=")[0] for a in args if a.startswith("--")]
    return [f"{script}: declares no flag {f}" for f in flags if f'"{f}"' not in source]


def _python_problems(words: list[str]) -> list[str]:
    args = words[1:]
    if not args:
        return ["a bare python call"]
    if args[0] == "main.py":
        return main_problems(args[1:])
    if args[0] == "-m":
        module, rest = args[1], args[2:]
        if module == "pytest":
            paths = [a.split("::")[0] for a in rest if not a.startswith("-") and ("/" in a or a.endswith(".py"))]
            return [f"pytest: {p}: no such test file or folder" for p in paths if not (ROOT / p).exists()]
        if module in ("venv", "pip"):
            return _tool_pip(["pip", *rest]) if module == "pip" else []
        import importlib.util

        return [] if importlib.util.find_spec(module) else [f"python -m {module}: no such module"]
    if args[0].endswith((".py", ".sh")):
        return _script_problems(args[0], args[1:])
    return [f"python {' '.join(args)}: no rule for this call"]


def _tool_pip(words: list[str]) -> list[str]:
    if words[1:2] != ["install"]:
        return [f"pip {' '.join(words[1:])}: only 'pip install' is documented"]
    rest, problems = words[2:], []
    for i, word in enumerate(rest):
        if word == "-r" and not (ROOT / rest[i + 1]).is_file():
            problems.append(f"pip install -r {rest[i + 1]}: no such file")
    return problems


def _tool_torchrun(words: list[str]) -> list[str]:
    rest = words[1:]
    while rest and rest[0].startswith("--"):
        flag = rest.pop(0)
        if flag.split("=")[0] not in ("--nproc_per_node", "--nproc-per-node", "--nnodes", "--standalone",
                                      "--node_rank", "--master_addr", "--master_port"):
            return [f"torchrun {flag}: not a torchrun flag this page may use"]
        if "=" not in flag and flag != "--standalone":
            rest.pop(0)
    return main_problems(rest[1:]) if rest[:1] == ["main.py"] else [f"torchrun: expected main.py, got {rest[:1]}"]


def _tool_bash(words: list[str]) -> list[str]:
    return _script_problems(words[1], words[2:]) if len(words) > 1 else ["a bare bash call"]


def _allowed(*subcommands: str) -> Callable[[list[str]], list[str]]:
    def rule(words: list[str]) -> list[str]:
        ok = not subcommands or (len(words) > 1 and words[1] in subcommands)
        return [] if ok else [f"{words[0]} {' '.join(words[1:2])}: not one of {subcommands}"]
    return rule


TOOLS: dict[str, Callable[[list[str]], list[str]]] = {
    **{p: _python_problems for p in PYTHONS},
    "pip": _tool_pip, ".venv/bin/pip": _tool_pip,
    "torchrun": _tool_torchrun,
    "bash": _tool_bash,
    ".venv/bin/ruff": _allowed("check"), "ruff": _allowed("check"),
    "git": _allowed("clone", "status", "log", "diff", "pull", "checkout"),
    "tensorboard": _allowed(), "wandb": _allowed("sync"), "mlflow": _allowed("ui"),
    "sbatch": _allowed(), "squeue": _allowed(), "scancel": _allowed(), "sacct": _allowed(), "scontrol": _allowed(),
    "mkdir": _allowed(), "tar": _allowed(), "cp": _allowed(), "cat": _allowed(), "ls": _allowed(),
}


def command_problems(words: list[str]) -> list[str]:
    tool = words[0]
    if tool in TOOLS:
        return TOOLS[tool](words)
    if tool.endswith(".sh"):  # a script run directly
        return _script_problems(tool, words[1:])
    return [f"{tool}: no rule checks this tool (add one to tests/test_docs.py TOOLS)"]


def block_command_problems(block: Block) -> list[str]:
    return [f"{block.where}: {p}" for line in command_lines(block) for words in simple_commands(line)
            for p in command_problems(words)]


def main_calls(block: Block) -> list[list[str]]:
    """The ``main.py`` argument lists of a block, in order."""
    calls = []
    for line in command_lines(block):
        for words in simple_commands(line):
            if words[0] in PYTHONS and words[1:2] == ["main.py"]:
                calls.append(words[2:])
            elif words[0] == "torchrun" and "main.py" in words:
                calls.append(words[words.index("main.py") + 1:])
    return calls


# -------------------------------------------------------------------------------------------- sandbox
SMOKE = {"num_steps": 1, "max_batches": 2}


def _smoke(cfg: dict[str, Any]) -> dict[str, Any]:
    """A digits config cut to one epoch of two batches and two mask samples per class."""
    training = cfg.setdefault("training", {})
    training.update(SMOKE)
    compressor = training.setdefault("compressor", {})
    if compressor.get("per_class_samples", 10) is not None:
        compressor["per_class_samples"] = 2
    if isinstance(training.get("irp"), dict):
        training["irp"].update(iterations=2, epochs_per_iteration=1)
    return cfg


class Sandbox:
    """A working folder in which documented commands run: a copy of exp_configs/ (digits configs cut by
    :func:`_smoke`) and a link to docs/; outputs land in it, never in the repository."""

    def __init__(self, path: Path) -> None:
        self.path = path
        shutil.copytree(ROOT / "exp_configs", path / "exp_configs")
        (path / "docs").symlink_to(ROOT / "docs", target_is_directory=True)
        for file in (path / "exp_configs").rglob("*.json"):
            try:
                cfg = json.loads(file.read_text(encoding="utf-8"))
            except ValueError:
                continue
            if isinstance(cfg, dict) and cfg.get("dataset", {}).get("class", "digits").lower() == "digits":
                file.write_text(json.dumps(_smoke(cfg), indent=1), encoding="utf-8")

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        import torch

        cwd, threads = os.getcwd(), torch.get_num_threads()
        os.chdir(self.path)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            os.chdir(cwd)
            torch.set_num_threads(threads)

    def main(self, argv: list[str]) -> tuple[int, str]:
        """Run ``main.py ARGV`` in-process inside the sandbox: (exit code, its output)."""
        import main

        out = io.StringIO()
        with self.inside(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                code = main.main(list(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        return code, out.getvalue()

    def run_block(self, block: Block) -> list[str]:
        problems = []
        for argv in main_calls(block):
            code, output = self.main(argv)
            if code != 0:
                problems.append(f"{block.where}: main.py {' '.join(argv)} exited {code}:\n{output[-3000:]}")
        return problems


FIRST_RUN = ("my_configs/fts_sparsity0.95.json", "results/first")  # README.md's first experiment


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory) -> Sandbox:
    """The sandbox with README.md's ``check: run`` blocks executed (one tiny completed run, reused)."""
    box = Sandbox(tmp_path_factory.mktemp("docs_sandbox"))
    readme_runs = [b for b in ALL_BLOCKS if b.page == README_FILE and b.check == "run"]
    assert readme_runs, "README.md lost its first experiment (a check: run block)"
    for block in readme_runs:
        problems = box.run_block(block)
        assert problems == []
    assert (box.path / FIRST_RUN[0]).is_file()
    return box


def first_run_dir(box: Sandbox) -> Path:
    from runspec import RunSpec

    with box.inside():
        return box.path / RunSpec.load(FIRST_RUN[0]).run_dir(FIRST_RUN[1])


# ------------------------------------------------------------------------------------- block tests
@pytest.mark.parametrize("block", _blocks(lambda b: b.lang in ("bash", "console")))
def test_every_command_line_is_valid(block: Block) -> None:
    assert command_lines(block), f"{block.where}: an empty command block"
    assert block_command_problems(block) == []


@pytest.mark.parametrize("block", _blocks(lambda b: b.lang in ("bash", "console") and b.check == "run"
                                          and b.page != README_FILE))
def test_run_blocks_run(block: Block, sandbox: Sandbox) -> None:
    assert main_calls(block), f"{block.where}: a check: run block without a main.py command"
    assert sandbox.run_block(block) == []


def json_problems(block: Block) -> list[str]:
    from runspec import RunSpec
    from utils.schema import ConfigError

    try:
        data = json.loads(block.text)
    except ValueError as exc:
        return [f"{block.where}: not JSON: {exc}"]
    if block.check == "json-data":
        return []
    try:
        RunSpec.from_dict(data, block.where)
    except ConfigError as exc:  # an optional tracker's package missing here is no fault of the page
        return [str(p) for p in exc.problems if not OPTIONAL_PACKAGE.search(str(p))]
    return []


@pytest.mark.parametrize("block", _blocks(lambda b: b.lang == "json"))
def test_every_json_block_is_a_valid_config(block: Block) -> None:
    assert json_problems(block) == []


def python_problems(block: Block, namespace: dict[str, Any] | None = None) -> list[str]:
    try:
        exec(compile(block.text, block.where, "exec"), {"__name__": "__docs__"} if namespace is None else namespace)  # noqa: S102
    except Exception as exc:  # noqa: BLE001 - the failure is the finding
        return [f"{block.where}: {type(exc).__name__}: {exc}"]
    return []


@pytest.mark.parametrize("block", _blocks(lambda b: b.lang == "python" and not b.check))
def test_python_blocks_run(block: Block, sandbox: Sandbox) -> None:
    with sandbox.inside():
        assert python_problems(block) == []


@pytest.mark.parametrize("block", _blocks(lambda b: b.lang == "python" and b.check.startswith("excerpt ")))
def test_excerpts_are_in_their_files(block: Block) -> None:
    source = [line.strip() for line in (ROOT / block.check.split()[1]).read_text(encoding="utf-8").splitlines()]
    wanted = [line.strip() for line in block.text.splitlines() if line.strip()]
    position = 0
    for line in wanted:
        assert line in source[position:], f"{block.where}: not in {block.check.split()[1]} (in order): {line}"
        position = source.index(line, position) + 1


def tree_problems(block: Block) -> list[str]:
    problems = []
    for line in block.text.splitlines():
        first = re.split(r"\s{2,}", line.strip())[0] if line.strip() else ""
        for name in filter(None, (n.strip() for n in first.split(","))):
            if not (ROOT / name).exists() and not PLACEHOLDER.fullmatch(name):
                problems.append(f"{block.where}: {name}: no such file or folder")
    return problems


@pytest.mark.parametrize("block", _blocks(lambda b: b.lang == "text"))
def test_layout_trees_name_real_paths(block: Block) -> None:
    assert tree_problems(block) == []


def test_every_block_has_a_rule() -> None:
    known = {"bash", "console", "json", "python", "text"}
    directives = re.compile(r"(run|with-plugin|json-data|torch-prune-load|excerpt \S+|plugin \w+)")
    assert [b.where for b in ALL_BLOCKS if b.lang not in known] == []
    assert [f"{b.where}: {b.check}" for b in ALL_BLOCKS if b.check and not directives.fullmatch(b.check)] == []
    assert len(ALL_BLOCKS) > 40


def test_the_torch_prune_snippet_loads_an_export(sandbox: Sandbox) -> None:
    import torch

    import export
    import models
    from utils.io import load_torch

    (block,) = [b for b in ALL_BLOCKS if b.check == "torch-prune-load"]
    run_dir = first_run_dir(sandbox)
    export.export_run(run_dir, "torch-prune", sandbox.path / "exported")
    namespace: dict[str, Any] = {}
    with sandbox.inside():
        assert python_problems(block, namespace) == []
    masked = models.build("digits_cnn", num_classes=10, input_shape=(1, 8, 8))
    masked.load_state_dict(load_torch(run_dir / "final_model.pt"))
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(namespace["model"](x), masked.eval()(x))


# --------------------------------------------------------------------------------- plugin templates
PLUGIN_PACKAGES = {"compressors/criteria": "compressors.criteria", "data/datasets": "data.datasets",
                   "models": "models", "trainers": "trainers", "export": "export"}


def _registries() -> list[Any]:
    import compressors
    import data
    import export
    import models
    from runspec import EXPERIMENTS

    return [compressors.REGISTRY, data.REGISTRY, models.REGISTRY, EXPERIMENTS, export.FORMATS]


@contextlib.contextmanager
def dropped(block: Block, folder: Path) -> Iterator[str]:
    """The template written to ``folder`` under the file name of its first line and added to its plugin
    package's path; yields the module name.  Registry entries, the module and the path go on exit."""
    import importlib

    first = block.text.splitlines()[0]
    target = re.fullmatch(r"# ([\w/]+)/(\w+)\.py", first)
    assert target and target.group(1) in PLUGIN_PACKAGES, f"{block.where}: first line names no plugin file"
    package, stem = PLUGIN_PACKAGES[target.group(1)], target.group(2)
    assert not (ROOT / target.group(1) / f"{stem}.py").exists(), f"{block.where}: {first[2:]} exists already"
    (folder / f"{stem}.py").write_text(block.text, encoding="utf-8")
    path = importlib.import_module(package).__path__
    path.append(str(folder))
    module = f"{package}.{stem}"
    try:
        yield module
    finally:
        getattr(path, "_path", path).remove(str(folder))  # a namespace package's path keeps its list in _path
        for registry in _registries():
            for key in [k for k, v in registry._entries.items() if getattr(v, "__module__", "") == module]:
                del registry._entries[key], registry._display[key]
        sys.modules.pop(module, None)


def _check_criterion(sandbox: Sandbox, module: str) -> None:
    import torch

    import compressors

    crit = compressors.build("taylor_power", power=2.0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Flatten(), torch.nn.Linear(12, 4),
                                torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    loader = [(x[:3], y[:3]), (x[3:], y[3:])]
    scores = crit.score(model, loader, torch.nn.CrossEntropyLoss())
    loss = sum(torch.nn.functional.cross_entropy(model(a), b) for a, b in loader)
    grads = torch.autograd.grad(loss, [model[0].weight, model[2].weight])
    assert list(scores) == ["0.weight", "2.weight"]  # the classifier is not prunable by default
    assert torch.allclose(scores["0.weight"], (model[0].weight * grads[0]).abs() ** 2, atol=1e-7)
    assert torch.allclose(scores["2.weight"], (model[2].weight * grads[1]).abs() ** 2, atol=1e-7)


def _check_dataset(sandbox: Sandbox, module: str) -> None:
    import data

    splits = data.get("blobs")(samples=50).load()
    assert len(splits.train) == len(splits.test) == 50 and splits.num_classes == 10
    assert tuple(splits.train[0][0].shape) == (1, 8, 8) and sorted(set(splits.train_targets)) == list(range(10))


def _check_model(sandbox: Sandbox, module: str) -> None:
    import torch

    import compressors
    import models

    model = models.build("tiny_convnet", num_classes=7, input_shape=(3, 32, 32))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert compressors.prunable_names(model) == ["0.weight", "3.weight"]


def _check_experiment(sandbox: Sandbox, module: str) -> None:
    from runspec import EXPERIMENTS, config_fields

    assert "two_shot" in EXPERIMENTS.names()
    assert "training.two_shot.at" in [row[0] for row in config_fields()]


def _check_export(sandbox: Sandbox, module: str) -> None:
    import numpy as np

    from utils.io import load_torch

    out = sandbox.path / "exported" / "npz"
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == "npz" and list(manifest["files"]) == ["model.npz"]
    final = load_torch(first_run_dir(sandbox) / "final_model.pt")
    with np.load(out / "model.npz") as arrays:
        assert sorted(arrays.files) == sorted(final)
        assert all(np.array_equal(arrays[k], v.numpy()) for k, v in final.items())


def _check_figure(sandbox: Sandbox, block: Block) -> None:
    from reporting import build_report
    from reporting import figures as figs

    namespace = dict(vars(figs))
    assert python_problems(block, namespace) == []
    with sandbox.inside():
        report = build_report(FIRST_RUN[1], "reports/figure_check", figures=False, progress=False, log=lambda s: None)
    paths = namespace["accuracy_bars"](report.aggregated, report.metric, sandbox.path / "reports" / "figure_check")
    assert sorted(p.suffix for p in paths) == [".pdf", ".png"] and all(p.stat().st_size > 0 for p in paths)


def _check_tracker(sandbox: Sandbox, block: Block) -> None:
    from engine import trackers

    namespace = dict(vars(trackers))
    assert python_problems(block, namespace) == []
    folder = sandbox.path / "tracker_check"
    folder.mkdir()
    tracker = namespace["JsonLines"](folder)
    assert isinstance(tracker, trackers.Tracker)
    tracker.epoch(1, {"epoch": 1, "train_loss": 0.5, "stage": "train"}, {"0.weight": 0.1})
    tracker.finish({"seed": 0}, {"final_test_acc": 0.9})
    tracker.close()
    rows = [json.loads(line) for line in (folder / "epochs.jsonl").read_text().splitlines()]
    assert rows == [{"epoch": 1, "train_loss": 0.5, "layer_density": {"0.weight": 0.1}},
                    {"final": {"final_test_acc": 0.9}}]


DROPPED_CHECKS = {"criterion": _check_criterion, "dataset": _check_dataset, "model": _check_model,
                  "experiment": _check_experiment, "export": _check_export}
NAMESPACE_CHECKS = {"figure": _check_figure, "tracker": _check_tracker}


def _with_plugin_block(block: Block) -> Block | None:
    """The ``check: with-plugin`` block that follows a template on its page (before the next template)."""
    later = [b for b in ALL_BLOCKS if b.page == block.page and b.line > block.line]
    for b in later:
        if b.check.startswith("plugin "):
            return None
        if b.check == "with-plugin":
            return b
    return None


@pytest.mark.parametrize("block", _blocks(lambda b: b.check.startswith("plugin ")))
def test_plugin_templates_work_as_the_page_says(block: Block, sandbox: Sandbox, tmp_path: Path) -> None:
    kind = block.check.split()[1]
    assert kind in DROPPED_CHECKS or kind in NAMESPACE_CHECKS, f"{block.where}: unknown plugin kind {kind}"
    if kind in NAMESPACE_CHECKS:
        NAMESPACE_CHECKS[kind](sandbox, block)
        return
    follow = _with_plugin_block(block)
    assert follow is not None, f"{block.where}: no check: with-plugin commands follow the template"
    with dropped(block, tmp_path) as module:
        assert sandbox.run_block(follow) == []
        DROPPED_CHECKS[kind](sandbox, module)


def test_every_plugin_kind_has_a_template() -> None:
    kinds = {b.check.split()[1] for b in ALL_BLOCKS if b.check.startswith("plugin ")}
    assert kinds == set(DROPPED_CHECKS) | set(NAMESPACE_CHECKS)


# ----------------------------------------------------------------------------------- generated tables
def generated_fields() -> str:
    import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main.main(["list", "--fields"]) == 0
    return out.getvalue()


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def generated_options() -> str:
    """One row per option of every criterion; criteria sharing an Options class share their rows."""
    import compressors
    from utils.schema import describe_fields

    by_options: dict[type, list[str]] = {}
    for name in compressors.names():
        cls = compressors.get(name)
        if cls.registered_name == name:  # aliases (dense = none) once
            by_options.setdefault(cls.Options, []).append(name)
    lines = ["| criteria | option | type | default | meaning |", "|---|---|---|---|---|"]
    for options, names in by_options.items():
        for key, kind, default, meaning in describe_fields(options):
            lines.append(f"| {', '.join(f'`{n}`' for n in names)} | `{key}` | {_cell(kind)} | `{_cell(default)}` "
                         f"| {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


def _argument_rows(command: str, parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(action.option_strings) or action.dest
        if action.choices is not None:
            name += " {" + ",".join(map(str, action.choices)) + "}"
        elif action.option_strings and action.nargs != 0:
            name += f" {action.metavar or action.dest.upper()}"
        empty = action.default is None or action.default is False or action.default == [] \
            or action.default == argparse.SUPPRESS
        default = "" if empty or action.required else action.default
        rows.append(f"| `{command}` | `{_cell(name)}` | {f'`{_cell(default)}`' if default != '' else ''} "
                    f"| {_cell(action.help or '')} |")
    return rows


def generated_cli() -> str:
    import main

    parser = main.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    lines = ["| command | argument | default | meaning |", "|---|---|---|---|"]
    for name, sub in commands.choices.items():
        lines += _argument_rows(name, sub)
    lines += _argument_rows("--experiment ... (official form)", main.official_parser())
    return "\n".join(lines) + "\n"


GENERATORS = {"fields": generated_fields, "options": generated_options, "cli": generated_cli}


def _span(text: str, name: str) -> tuple[int, int]:
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    assert start in text and end in text, f"no {start.strip()} ... {end} in the page"
    return text.index(start) + len(start), text.index(end)


def marked(text: str, name: str) -> str:
    """The text between a page's ``<!-- name:start -->`` line and its ``<!-- name:end -->``."""
    begin, end = _span(text, name)
    return text[begin:end]


def write_generated() -> None:
    for name, page in GENERATED.items():
        text = page.read_text(encoding="utf-8")
        begin, end = _span(text, name)
        page.write_text(text[:begin] + GENERATORS[name]() + text[end:], encoding="utf-8")


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_tables_equal_what_the_code_gives(name: str) -> None:
    page = GENERATED[name]
    assert marked(page.read_text(encoding="utf-8"), name) == GENERATORS[name](), (
        f"{page.relative_to(ROOT)}: the {name} table is stale; regenerate: .venv/bin/python tests/test_docs.py --write")


def test_every_config_field_is_in_the_reference_table() -> None:
    from runspec import config_fields

    table = marked(GENERATED["fields"].read_text(encoding="utf-8"), "fields")
    assert [path for path, *_ in config_fields() if f"`{path}`" not in table] == []


# ------------------------------------------------------------------------------------ README and flags
def test_the_ci_test_command_and_the_quickstart_are_in_the_readme() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"TEST_CMD='([^']+)'", ci).group(1)
    readme = README_FILE.read_text(encoding="utf-8")
    assert command in readme
    assert ("python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && "
            ".venv/bin/python main.py run exp_configs/quickstart") in readme
    assert len(readme.splitlines()) <= 150


def test_every_command_line_flag_is_documented() -> None:
    import main

    parser = main.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    flags = {f"{name}: {opt}" for name, sub in commands.choices.items() for action in sub._actions
             for opt in action.option_strings if opt.startswith("--") and opt != "--help"}
    flags |= {f"official: {opt}" for action in main.official_parser()._actions for opt in action.option_strings
              if opt.startswith("--") and opt != "--help"}
    docs = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    assert len(flags) > 20
    assert sorted(f for f in flags if f.split(": ")[1] not in docs) == []


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The heading anchors of a Markdown page, as GitHub makes them (lower case, punctuation dropped,
    spaces to hyphens), outside code blocks."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_relative_links_and_their_anchors_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = page.parent / path if path else page
            if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_docs_index_lists_every_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    pages = [p for p in (ROOT / "docs").rglob("*.md") if p.name != "README.md"]
    assert [str(p.relative_to(ROOT / "docs")) for p in pages if f"({p.relative_to(ROOT / 'docs')})" not in index] == []


# ------------------------------------------------------------------------ the checks catch mistakes
def _fake(lang: str, text: str, check: str = "") -> Block:
    return Block(ROOT / "docs" / "README.md", 1, lang, check, text)


def test_a_wrong_flag_a_missing_path_or_an_unknown_tool_is_flagged() -> None:
    assert block_command_problems(_fake("bash", ".venv/bin/python main.py run exp_configs/quickstart\n")) == []
    assert "unrecognized arguments: --no-such-flag" in "".join(
        block_command_problems(_fake("bash", ".venv/bin/python main.py run exp_configs/quickstart --no-such-flag\n")))
    assert "no such file" in "".join(
        block_command_problems(_fake("bash", "python main.py validate exp_configs/no_such_folder\n")))
    assert "invalid choice" in "".join(block_command_problems(_fake("bash", "python main.py rnu exp_configs\n")))
    assert "no rule" in "".join(block_command_problems(_fake("bash", "frobnicate --all\n")))
    assert "declares no flag --fastest" in "".join(
        block_command_problems(_fake("bash", ".venv/bin/python benchmarks/scoring.py --fastest\n")))
    assert block_command_problems(_fake("console", "$ python main.py list --feilds\nfields: ...\n"))


def test_a_bad_config_a_failing_snippet_or_a_stale_table_is_flagged() -> None:
    assert json_problems(_fake("json", '{"training": {"compressor": {"sparsity": 0.9}}}\n')) == []
    assert "sparsity" in "".join(json_problems(_fake("json", '{"training": {"compressor": {"sparsity": 1.5}}}\n')))
    assert json_problems(_fake("json", '{"dataset": {"batch_sise": 1}}\n'))
    assert json_problems(_fake("json", '{"not": "a config"}\n', "json-data")) == []
    assert "ZeroDivisionError" in "".join(python_problems(_fake("python", "1 / 0\n")))
    assert tree_problems(_fake("text", "no_such_dir/   nothing\n"))
    assert {"every-field", "generalcompat-the-papers-or-the-official-code"} <= anchors(GENERATED["fields"])
    page = "<!-- fields:start -->\n| `x` |\n<!-- fields:end -->\n"
    assert marked(page, "fields") != generated_fields()


def test_blocks_and_their_directives_are_found() -> None:
    text = "a\n<!-- check: run -->\n```bash\npython main.py list\n```\n\n```json\n{}\n```\n"
    found = blocks_of(text, ROOT / "README.md")
    assert [(b.line, b.lang, b.check, b.text) for b in found] == [
        (3, "bash", "run", "python main.py list\n"), (7, "json", "", "{}\n")]
    assert simple_commands("A=1 python main.py list && ls docs | cat") == [
        ["python", "main.py", "list"], ["ls", "docs"], ["cat"]]
    text = "python main.py run \\\n  exp_configs/quickstart  # note\n# only a comment\n"
    (line,) = command_lines(_fake("bash", text))
    assert simple_commands(line) == [["python", "main.py", "run", "exp_configs/quickstart"]]


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_generated()
        print("regenerated: " + ", ".join(f"{n} ({p.relative_to(ROOT)})" for n, p in GENERATED.items()))
    else:
        print("usage: python tests/test_docs.py --write   # regenerate the docs' generated tables")
