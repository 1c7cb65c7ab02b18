import os
from pathlib import Path

import pytest

from genlab.cli import main

REPO = Path(__file__).resolve().parents[1]
# Real data sets live beside the project (../shared/data); GENLAB_SHARED_DATA points elsewhere.
SHARED_DATA = Path(os.environ.get("GENLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Prepared data goes to a temporary cache, never the user's ~/.cache/genlab."""
    path = tmp_path_factory.mktemp("genlab-cache")
    old = os.environ.get("GENLAB_CACHE")
    os.environ["GENLAB_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("GENLAB_CACHE", None)
    else:
        os.environ["GENLAB_CACHE"] = old


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; set GENLAB_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture
def cli(capsys):
    """Run the genlab CLI in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def only_run(runs: Path) -> Path:
    dirs = sorted(p for p in runs.iterdir() if p.is_dir())
    assert len(dirs) == 1, dirs
    return dirs[0]
