"""The package layout holds: each package imports only the ones below it (docs/architecture.md), says so in its
docstring, no module grows past about 400 lines, and the quick commands start without Lightning."""

import ast
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "src" / "gptlab"
# what each part of gptlab may import (besides itself); the layers of docs/architecture.md, from the bottom up
ALLOWED = {
    "errors": set(),
    "compat": set(),
    "console": set(),
    "config": {"errors", "compat"},
    "model": {"errors"},
    "data": {"errors", "compat", "config", "console"},
    "interop": {"errors", "model", "data"},
    "finetune": {"errors", "model"},
    "checkpoints": {"errors", "compat", "config", "model", "data", "interop", "finetune"},
    "train": {"errors", "compat", "console", "config", "model", "data", "interop", "checkpoints", "finetune"},
    "evaluation": {"errors", "compat", "console", "config", "model", "data", "checkpoints"},
    "serve": {"errors", "config", "model", "checkpoints"},
    "sweeps": {"errors", "compat"},
    "schemas": {"errors", "config", "model", "data", "train", "finetune"},
    "cli": {"errors", "config", "schemas"},
    "commands": {"errors", "compat", "config", "model", "data", "interop", "checkpoints", "train", "evaluation"}
    | {"serve", "sweeps", "schemas", "cli", "console", "finetune"},
}


def part_of(path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def gptlab_imports(path) -> set[str]:
    """The parts of gptlab a module imports, wherever the import statement stands (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gptlab":
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("gptlab.")}
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_the_layers_below_it(path):
    part = part_of(path)
    assert part in ALLOWED, f"{part}: a new part of gptlab; give it a layer here and in docs/architecture.md"
    assert gptlab_imports(path) - {part} <= ALLOWED[part]


def test_every_package_says_what_it_owns_and_may_import():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert f"gptlab.{init.parent.name}:" in doc and "May import" in doc, init


def test_no_module_is_over_about_400_lines():
    sizes = {p.relative_to(PACKAGE): len(p.read_text().splitlines()) for p in MODULES}
    assert max(sizes.values()) <= 420, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("command", ["generate.py", "serve.py", "export.py"])
def test_the_quick_commands_import_no_lightning(command):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "src" / command), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
    assert "gptlab.model.gpt" in imported  # the import log is read
    assert not {m for m in imported if m.split(".")[0] in ("lightning", "pytorch_lightning", "torchmetrics")}
