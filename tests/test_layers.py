"""The shape of the code, checked: the import layering (import-linter's contract in pyproject.toml),
deferred imports only with their reason, and the size limits that keep modules readable."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "genlab"
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def lint(src_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src_root)}
    return subprocess.run([*LINT, "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_layers_contract_holds():
    done = lint(REPO / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_the_contract_breaks_when_an_import_circle_comes_back(tmp_path):
    """The circles that were cut (the loop reaching up into detect/ and report/, a family importing the
    detector benchmark): put one back in a copy of the package and the contract must fail, naming it."""
    copy = tmp_path / "src" / "genlab"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    loop = copy / "train" / "loop.py"
    loop.write_text(loop.read_text() + "\nfrom genlab.detect.adversary import attach_adversary  # noqa\n")
    done = lint(tmp_path / "src")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout and "genlab.train.loop -> genlab.detect.adversary" in done.stdout


def _function_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    yield inner


def test_deferred_imports_say_why():
    """An import inside a function hides a dependency from the contract: allowed only to put off a
    heavy or optional one, and then its line says so (# deferred: ...)."""
    unexplained = []
    for path in SRC.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in _function_imports(ast.parse(lines and "\n".join(lines))):
            if "# deferred:" not in lines[node.lineno - 1]:
                unexplained.append(f"{path.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unexplained, "\n".join(unexplained)


def test_no_module_over_500_lines_and_no_training_function_over_80():
    long_files = [f"{p.relative_to(REPO)} ({n})" for p in SRC.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > 500]
    assert not long_files, long_files
    long_functions = []
    for path in (SRC / "train").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long_functions, long_functions
