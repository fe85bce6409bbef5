"""The README stays true: its criterion example runs as printed, every config field is documented,
and the two set-up command lines are the ones CI runs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

import compressors
import compressors.criteria
from runspec import config_fields

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def test_the_adding_a_criterion_example_runs_as_printed(tmp_path: Path) -> None:
    code = re.search(r"```python\n(# compressors/criteria/(\w+)\.py\n.*?)```", _section("Adding a criterion"), re.S)
    assert code, "the README lost its criterion example"
    source, module = code.group(1), code.group(2)
    (tmp_path / f"{module}.py").write_text(source)
    compressors.criteria.__path__.append(str(tmp_path))
    try:
        crit = compressors.build("taylor_power", power=2.0)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Flatten(), torch.nn.Linear(12, 4),
                                    torch.nn.ReLU(), torch.nn.Linear(4, 2))
        x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 0, 1, 1, 0])
        loader = [(x[:3], y[:3]), (x[3:], y[3:])]
        scores = crit.score(model, loader, torch.nn.CrossEntropyLoss())
        loss = sum(torch.nn.functional.cross_entropy(model(a), b) for a, b in loader)
        grads = torch.autograd.grad(loss, [model[0].weight, model[2].weight])
        assert torch.allclose(scores["0.weight"], (model[0].weight * grads[0]).abs() ** 2, atol=1e-7)
        assert torch.allclose(scores["2.weight"], (model[2].weight * grads[1]).abs() ** 2, atol=1e-7)
    finally:
        compressors.criteria.__path__.remove(str(tmp_path))
        for table in (compressors.REGISTRY._entries, compressors.REGISTRY._display):
            table.pop("taylor_power", None)
        sys.modules.pop(f"compressors.criteria.{module}", None)


def test_every_config_field_is_in_the_reference_table() -> None:
    table = _section("Config files")
    missing = [path for path, *_ in config_fields() if f"`{path}`" not in table]
    assert missing == [], f"README config reference lacks {missing}; regenerate with main.py list --fields"


def test_the_ci_test_command_is_in_the_readme() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"TEST_CMD='([^']+)'", ci).group(1)
    assert command in README
    assert "main.py run exp_configs/quickstart" in _section("Set-up: two command lines")


def test_every_command_line_flag_is_documented() -> None:
    import argparse

    import main

    parser = main.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    flags = {f"{name}: {opt}" for name, sub in commands.choices.items() for action in sub._actions
             for opt in action.option_strings if opt.startswith("--") and opt != "--help"}
    flags |= {f"official: {opt}" for action in main.official_parser()._actions for opt in action.option_strings
              if opt.startswith("--") and opt != "--help"}
    assert len(flags) > 20
    assert sorted(f for f in flags if f.split(": ")[1] not in README) == []
