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


# CI sets this: there the real data must be present, and its absence is a failure, never a skip.
REQUIRE_SHARED_DATA = os.environ.get("GENLAB_REQUIRE_SHARED_DATA", "") not in ("", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "realdata: reads the real data sets in ../shared/data (GENLAB_SHARED_DATA)")


def pytest_collection_modifyitems(config, items):
    """Every test that takes the ``shared_data`` fixture is a real-data test (`-m "not realdata"`)."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realdata)


@pytest.fixture
def shared_data() -> Path:
    """The real data sets. On a bare clone they are absent and the test is skipped with its reason;
    with GENLAB_REQUIRE_SHARED_DATA=1 (CI) their absence fails the test instead."""
    if not SHARED_DATA.is_dir():
        reason = f"real data not found at {SHARED_DATA} (set GENLAB_SHARED_DATA to the folder holding celeba/, ...)"
        if REQUIRE_SHARED_DATA:
            pytest.fail(f"{reason}; GENLAB_REQUIRE_SHARED_DATA is set, so it is required")
        pytest.skip(reason)
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


# CI sets this too: there a missing Chromium fails the browser test instead of skipping it.
REQUIRE_BROWSER = os.environ.get("GENLAB_REQUIRE_BROWSER", "") not in ("", "0")


@pytest.fixture
def browser():
    """Headless Chromium (Debian's chromium and chromium-driver) through Selenium, with the browser
    console log kept. Skipped with its reason where they are not installed; CI requires them."""
    import shutil

    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        binary = None
    if binary is None or driver_path is None:
        reason = "headless Chromium not found (apt install chromium chromium-driver; pip install selenium)"
        if REQUIRE_BROWSER:
            pytest.fail(f"{reason}; GENLAB_REQUIRE_BROWSER is set, so it is required")
        pytest.skip(reason)
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,2000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()
