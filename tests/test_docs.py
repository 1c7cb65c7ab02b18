"""The docs are current: every command the README shows runs (with tiny overrides so it takes
seconds), the README stays a short guide, and the result pages match benchmarks/results/*.json."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from genlab.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TINY_DATA = "data.limit=160"  # enough images for every split, a few seconds an epoch


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def readme_commands() -> list[list[list[str]]]:
    """The `genlab ...` commands of each bash block of the README, in order, as argument lists."""
    blocks = []
    for block in fenced(README.read_text(), "bash"):
        commands = []
        for line in block.splitlines():
            for part in line.split("#")[0].split("&&"):
                part = part.strip()
                if part.startswith("genlab "):
                    commands.append(shlex.split(part)[1:])
        if commands:
            blocks.append(commands)
    return blocks


def tiny(args: list[str], shared: Path | None = None) -> list[str]:
    """The same command at test size: one epoch on a few images, few samples to score."""
    command = args[0]
    if shared is not None:
        args = [a.replace("../shared/data", str(shared)) for a in args]
    out, extra = [], []
    for i, arg in enumerate(args):
        if arg.startswith("train.epochs="):
            arg = "train.epochs=2" if "--resume" in args else "train.epochs=1"
        if i and args[i - 1] == "--n" and command == "eval":
            arg = "64"
        if i and args[i - 1] == "--seeds" and command == "bench":
            arg = "0"
        out.append(arg)
    if command == "train" and "--resume" not in args:
        extra = ["train.epochs=1", TINY_DATA]
    if command == "sweep":
        extra = ["train.epochs=1", TINY_DATA, "--eval-n", "32"]
    if command == "detect":
        extra = ["train.epochs=1", TINY_DATA, "model.fake_n=64", "model.val_fake_n=32"]
    if command in ("train", "detect"):
        extra.append("--quiet")
    return out + extra


def run_block(commands, shared=None) -> None:
    for args in commands:
        code = main(tiny(args, shared))
        assert code == 0, f"genlab {' '.join(args)} exited with {code}"


def test_the_readme_is_a_short_guide_with_its_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    first = readme_commands()[0]
    assert first == [["train", "quickstart"]]  # install + quickstart; the test command is CI's (.ci/run)
    assert 'pip install -e ".[test]" && python -m pytest -q' in text
    for link in re.findall(r"\]\((docs/[^)#]+)\)", text):
        assert (REPO / link).exists(), link


def test_every_digits_command_in_the_readme_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    install, session, *_ = readme_commands()
    run_block(install + session)
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs[:3] == ["00000-quickstart-digits", "00001-dcgan-digits-digits", "00002-detector-digits"], runs
    for written in ("grid.png", "recon.png", "cooler.png", "vae-vs-gan.html", "sweeps/latent/results.json"):
        assert (tmp_path / written).is_file(), written


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (code,) = fenced(README.read_text(), "python")
    code = code.replace('overrides=["train.epochs=10"]', f'overrides=["train.epochs=1", "{TINY_DATA}"]')
    code = code.replace("EvalSettings(n=2000)", "EvalSettings(n=64)")
    printed = []
    namespace: dict = {"print": lambda *args: printed.append(args)}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["images"].shape == (16, 1, 32, 32) and namespace["results"]["swd"]["value"] > 0
    assert printed and "samples of vae" in printed[0][1]  # the value and its protocol


def test_every_real_data_command_in_the_readme_runs(tmp_path, monkeypatch, shared_data):
    monkeypatch.chdir(tmp_path)
    real = [block for block in readme_commands() if any("../shared/data" in a for c in block for a in c)]
    assert real, "the README shows no command on the real data"
    for block in real:
        run_block(block, shared_data)
    assert (tmp_path / "runs" / "ldm-celeba" / "checkpoints" / "last.pt").is_file()


def test_the_result_pages_are_generated_from_the_json_and_current():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "results_pages.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    index = (REPO / "docs" / "results" / "README.md").read_text()
    for json_file in (REPO / "benchmarks" / "results").glob("*.json"):
        assert f"[{json_file.stem}]({json_file.stem}.md)" in index


@pytest.mark.parametrize("page", sorted(p.name for p in (REPO / "docs").glob("*.md")))
def test_doc_pages_link_to_files_that_exist(page):
    text = (REPO / "docs" / page).read_text()
    for target in re.findall(r'(?:\]\(|src=")([^)"#:]+)[)"#]', text):
        assert (REPO / "docs" / target).exists(), f"{page}: {target}"


def test_a_stale_generated_table_is_found_and_rewritten():
    """The generator's own check on a page it did not write: a table between the markers is refilled
    from the JSON, and a hand-edited number is what --check would report."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_pages", REPO / "benchmarks" / "results_pages.py")
    pages = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pages)
    stale = "before\n<!-- generated: gan-quality -->\n| a hand-typed 40.0 |\n<!-- end generated -->\nafter\n"
    filled = pages.fill_tables(stale)
    assert filled != stale and "hand-typed" not in filled and filled.startswith("before") and filled.endswith("after\n")
    assert "`gan-celeba64`" in filled and pages.fill_tables(filled) == filled  # current once filled
