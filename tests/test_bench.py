"""`genlab bench`: a suite's entries trained at equal compute, scored over seeds, ranked on a page.

End to end through the CLI on tiny presets (seconds per run): the runs, results.json against the
runs' own numbers and an independent `genlab eval`, the page in a real browser, a failed run shown
as failed, a time budget that stops within a step of itself, --resume after a kill, and the bad
input that must be refused before anything starts."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from scipy import stats

from genlab import api, bench
from genlab.bench.score import sampling_cost
from genlab.config import EvalSettings
from genlab.metrics.spread import ranks_with_ties
from genlab.train.checkpoint import load_model

DIGITS = ["data.source=digits", "data.size=16", "data.channels=1", "data.limit=200", "data.val_fraction=0.2"]


def write_suite(path: Path, entries: list[dict], **settings) -> Path:
    suite = {"description": "a test suite", "data": DIGITS, "budget": {"steps": 8}, "seeds": [0], "metrics": ["swd"],
             "eval_n": 48, "curve": {"every": 1, "n": 32}, "grid_n": 9, "speed_n": 8, **settings, "entries": entries}
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    """Three tiny families (EDM with two sampler rows) and one entry that fails when it trains, two
    seeds, two runs at a time; through the CLI as a user runs it."""
    folder = tmp_path_factory.mktemp("bench")
    suite = write_suite(folder / "suite.yaml", [
        {"preset": "tiny-vae", "name": "vae"},
        {"preset": "tiny-dcgan", "name": "dcgan"},
        {"preset": "tiny-edm", "name": "edm", "samplers": {"nfe3": ["sampler.nfe=3"], "nfe5": ["sampler.nfe=5"]}},
        # resolves (every key is valid) but cannot build: 16x16 images take two widths; fails in training
        {"preset": "tiny-dcgan", "name": "broken", "overrides": ["model.g_widths=[8,16,32,64,128]"]},
    ], seeds=[0, 1], detectors={"overrides": ["train.epochs=1"], "n": 16})
    out = folder / "out"
    result = subprocess.run([sys.executable, "-m", "genlab", "bench", str(suite), "--out", str(out), "--parallel", "2"],
                            capture_output=True, text=True, timeout=900)
    return out, result


def test_bench_trains_scores_and_ranks_every_entry_over_seeds(tiny_bench):
    out, result = tiny_bench
    assert result.returncode == 1, result.stderr[-2000:]  # one entry failed: not every run finished
    results = json.loads((out / "results.json").read_text())
    made = {p.name for p in (out / "runs").iterdir()}
    assert made - {"broken-seed0", "broken-seed1"} == {f"{e}-seed{s}" for e in ("vae", "dcgan", "edm") for s in (0, 1)}
    assert results["finished"] == 6 and results["total"] == 8
    rows = {r["row"]: r for r in results["rows"]}
    assert set(rows) == {"vae", "dcgan", "edm nfe3", "edm nfe5", "broken"}
    t = stats.t.ppf(0.975, 1)
    for name, row in rows.items():
        if name == "broken":
            continue
        values = []
        for run in row["runs"]:
            run_dir = out / run["path"]
            assert json.loads((run_dir / "metrics.json").read_text())["train"]["steps"] == 8  # the budget, for all
            scored = json.loads((run_dir / "bench.json").read_text())["rows"][row["sampler"]]
            values.append(scored["report"]["swd"]["value"])
            assert "test split" in scored["report"]["swd"]["protocol"] and "val split" in scored["choice"]["swd"]["protocol"]
        spread = row["spread"]["report"]["swd"]
        mean = sum(values) / 2
        assert spread["mean"] == pytest.approx(mean)
        assert spread["half_width"] == pytest.approx(t * abs(values[0] - values[1]) / math.sqrt(2) / math.sqrt(2))
    # the number is genlab eval's: re-scored independently, same protocol
    run = out / "runs" / "edm-seed1"
    again = api.evaluate(run, ["swd"], EvalSettings(metrics=["swd"], n=48, split="report"), device="cpu",
                         overrides=["sampler.nfe=5"], record=False)
    assert again["swd"]["value"] == pytest.approx(rows["edm nfe5"]["runs"][1]["report"]["swd"], rel=1e-6)
    # sampling cost: network evaluations counted while sampling
    assert (rows["edm nfe3"]["nfe"], rows["edm nfe5"]["nfe"], rows["vae"]["nfe"], rows["dcgan"]["nfe"]) == (3, 5, 1, 1)
    board = results["leaderboards"]["swd"]["rows"]
    ranked = [(r["rank"], r["mean"]) for r in board if r["rank"] is not None]
    assert len(ranked) == 4 and ranked == sorted(ranked) and ranked[0][0] == 1
    assert board[-1] == {"row": "broken", "rank": None, "status": "no finished run"}
    assert {f["run"] for f in results["failed"]} == {"broken-seed0", "broken-seed1"}
    assert all("16x16 images need 2" in f["status"] and f["status"].startswith("failed (exit 2)") for f in results["failed"])
    # the detector matrix of each seed's finished generators, averaged over the seeds
    matrices = [json.loads((out / "detectors" / f"seed{k}" / "matrix.json").read_text()) for k in (0, 1)]
    assert all(m["rows_trained_on"] == [f"{e}-seed{k}" for e in ("vae", "dcgan", "edm")] for k, m in zip((0, 1), matrices))
    detect = results["detectors"]
    assert detect["entries"] == ["vae", "dcgan", "edm"] and detect["seeds"] == [0, 1]
    for i in range(3):
        for j in range(3):
            assert detect["auc"][i][j]["mean"] == pytest.approx((matrices[0]["auc"][i][j] + matrices[1]["auc"][i][j]) / 2)
    own = results["leaderboards"]["detector_auc_own"]["rows"]
    assert {r["row"] for r in own} == {"vae", "dcgan", "edm"}
    vae_own = next(r for r in own if r["row"] == "vae")
    assert vae_own["mean"] == pytest.approx((matrices[0]["auc"][0][0] + matrices[1]["auc"][0][0]) / 2)
    others = next(r for r in results["leaderboards"]["detector_auc_others"]["rows"] if r["row"] == "vae")
    assert others["mean"] == pytest.approx(sum(m["auc"][i][0] for m in matrices for i in (1, 2)) / 4)
    assert set(results["charts"]) == {"time", "cost"} and all((out / p).is_file() for p in results["charts"].values())
    assert results["machine"]["cpu_cores"] and results["command"].startswith("genlab bench")


def test_bench_page_opens_in_a_browser_with_every_image_and_the_failed_runs(tiny_bench, browser):
    out, _ = tiny_bench
    page = out / "report.html"
    browser.get(page.as_uri())
    images = browser.execute_script("return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
    # two charts and a grid per row that has a finished seed-0 run
    assert len(images) == 2 + 4 and all(done and width > 0 for _, done, width in images), images
    table = browser.find_element("css selector", "table.leaderboard").text
    results = json.loads((out / "results.json").read_text())
    for r in results["leaderboards"]["swd"]["rows"]:
        assert r["row"] in table
        if r["rank"] is not None:
            assert f"{r['mean']:.4g} ± {r['half_width']:.4g}" in table
    assert "no finished run" in table and "failed (exit 2)" in browser.find_element("tag name", "body").text
    links = browser.execute_script("return Array.from(document.querySelectorAll('table.leaderboard a')).map(a => a.href)")
    assert any(link.endswith("/runs/vae-seed0/") for link in links)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def test_a_time_budget_stops_each_run_within_a_step_of_it(tmp_path, cli):
    minutes = 0.04
    suite = write_suite(tmp_path / "suite.yaml", [{"preset": "tiny-vae", "name": "vae"},
                                                  {"preset": "tiny-dcgan", "name": "dcgan"}],
                        budget={"minutes": minutes}, curve={"every": 0})
    code, stdout, err = cli("bench", suite, "--out", tmp_path / "out")
    assert code == 0, err
    for name in ("vae-seed0", "dcgan-seed0"):
        train = json.loads((tmp_path / "out" / "runs" / name / "metrics.json").read_text())["train"]
        assert train["stopped_because"] == "max_minutes"
        step = train["train_time_s"] / train["steps"]  # (the mean step, the first one's warm-up included)
        # past the budget by less than a step: the clock is read before every step (a slow step on a
        # shared CI core is allowed twice the mean; 0.05 s covers the stop's last log flush, which the
        # recorded time includes, and its rounding to 10 ms)
        assert minutes * 60 <= train["train_time_s"] <= minutes * 60 + 2 * step + 0.05, (train, step)


def test_resume_after_a_kill_finishes_only_the_missing_runs(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", [{"preset": "tiny-vae", "name": "vae"},
                                                  {"preset": "tiny-dcgan", "name": "dcgan"}])
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "genlab", "bench", str(suite), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "runs" / "vae-seed0" / "bench.json"
    deadline = time.time() + 300
    while not first.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the bench and the run it had started
    process.wait()
    assert first.is_file()
    scored_at = first.stat().st_mtime_ns
    assert not (out / "runs" / "dcgan-seed0" / "bench.json").exists()
    result = subprocess.run([sys.executable, "-m", "genlab", "bench", "--resume", str(out)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert first.stat().st_mtime_ns == scored_at  # the finished run was neither retrained nor rescored
    assert (out / "logs" / "vae-seed0.log").read_text().count("genlab train") == 1
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] == 2 and "2 to do" not in result.stderr and "1 to do" in result.stderr
    # more seeds for a finished bench: only the new seed's runs are trained
    refused = subprocess.run([sys.executable, "-m", "genlab", "bench", "--resume", str(out), "--seeds", "1"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "leaves out seeds [0]" in refused.stderr
    more = subprocess.run([sys.executable, "-m", "genlab", "bench", "--resume", str(out), "--seeds", "0,1"],
                          capture_output=True, text=True, timeout=600)
    assert more.returncode == 0, more.stderr[-2000:]
    assert "2 to do" in more.stderr and first.stat().st_mtime_ns == scored_at
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["finished"] == 4
    assert all(r["spread"]["report"]["swd"]["n"] == 2 for r in results["rows"])


@pytest.mark.parametrize("entries, settings, at, message", [
    ([{"preset": "tiny-vea"}], {}, "preset: tiny-vea", "entry 'tiny-vea': unknown preset 'tiny-vea'"),
    ([{"preset": "tiny-vae", "overrides": ["model.latent_dimm=3"]}], {}, "model.latent_dimm", "entry 'tiny-vae': "),
    ([{"preset": "tiny-vae"}, {"preset": "tiny-dcgan", "overrides": ["data.size=32"]}], {}, "preset: tiny-dcgan",
     "entry 'tiny-dcgan' does not share the data of entry 'tiny-vae' (data.size 16 vs 32)"),
    ([{"preset": "tiny-vae", "samplers": {"cold": ["sampler.temperature=cold"]}}], {}, "cold:",
     "entry 'tiny-vae', sampler 'cold': "),
    ([{"preset": "tiny-vae", "color": 1}], {}, "color:", "unknown entry key 'color'"),
    ([{"preset": "tiny-vae"}], {"colour": 1}, "colour:", "unknown key 'colour'"),
])
def test_bad_suites_are_refused_naming_the_line_before_anything_starts(tmp_path, cli, entries, settings, at, message):
    suite = write_suite(tmp_path / "suite.yaml", entries, **settings)
    line = next(i for i, text in enumerate(suite.read_text().splitlines(), 1) if at in text)
    code, _, err = cli("bench", suite, "--out", tmp_path / "out")
    said = next(text for text in err.splitlines() if text.startswith("genlab: error:"))
    assert code == 2 and f"suite.yaml:{line}: {message}" in said, (line, err)
    assert not (tmp_path / "out").exists()


def test_bad_budgets_and_folders_are_refused(tmp_path, cli):
    suite = write_suite(tmp_path / "suite.yaml", [{"preset": "tiny-vae"}])
    for args, needle in ((["--budget-images", "0"], "budget images: must be a positive number, got 0"),
                         (["--budget-minutes", "-1"], "budget minutes: must be a positive number")):
        code, _, err = cli("bench", suite, "--out", tmp_path / "out", *args)
        assert code == 2 and needle in err
    zero = write_suite(tmp_path / "zero.yaml", [{"preset": "tiny-vae"}], budget={"minutes": 0})
    code, _, err = cli("bench", zero, "--out", tmp_path / "out")
    assert code == 2 and "budget minutes: must be a positive number, got 0" in err
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text("{}")
    for folder, needle in ((tmp_path / "nothing", "no such folder"), (tmp_path / "sweep", "not a bench folder")):
        code, _, err = cli("bench", "--resume", folder)
        assert code == 2 and needle in err
    assert not (tmp_path / "out").exists()


def test_shipped_suites_load_and_resolve_every_entry():
    names = bench.shipped_suites()
    assert {"tiny", "celeba32-cpu", "cifar10-likelihood", "celeba64-gpu", "detectors"} <= set(names)
    for name in names:
        suite = bench.load_suite(name, extra_data=["data.root=/data/that/need/not/exist"])
        assert suite.entries and suite.describe_budget()
        assert len({e.name for e in suite.entries}) == len(suite.entries)


def test_ranks_share_a_place_within_noise_and_one_seed_ranks_by_its_mean():
    spreads = {"a": {"mean": 1.0, "half_width": 0.5, "low": 0.5, "high": 1.5},
               "b": {"mean": 1.2, "half_width": 0.5, "low": 0.7, "high": 1.7},  # overlaps a: tied
               "c": {"mean": 3.0, "half_width": 0.1, "low": 2.9, "high": 3.1}}  # clearly worse than a and b
    assert ranks_with_ties(spreads) == {"a": 1, "b": 1, "c": 3}
    assert ranks_with_ties(spreads, higher_is_better=True) == {"c": 1, "a": 2, "b": 2}
    single = {k: {"mean": v, "half_width": None, "low": None, "high": None} for k, v in (("x", 2.0), ("y", 1.0))}
    assert ranks_with_ties(single) == {"y": 1, "x": 2}


def test_sampling_cost_counts_network_evaluations(tmp_path):
    run = api.train("tiny-ddpm", overrides=["train.max_steps=2", "train.epochs=1"], runs_dir=tmp_path, device="cpu",
                    quiet=True)
    method = load_model(run, torch.device("cpu"), fallback=False).method
    cost = sampling_cost(method, n=4, batch_size=4)
    assert cost["nfe_by_network"] == {"denoiser": 5} and cost["nfe"] == 5  # tiny-ddpm: DDIM, 5 steps
    assert cost["images"] == 4 and cost["images_per_s"] > 0
    # a flow samples through its inverse: one pass, counted as such
    run = api.train("tiny-realnvp", overrides=["train.max_steps=2", "train.epochs=1"], runs_dir=tmp_path, device="cpu",
                    quiet=True)
    flow = load_model(run, torch.device("cpu"), fallback=False).method
    assert sampling_cost(flow, n=4, batch_size=4)["nfe_by_network"] == {"flow": 1}
    assert "inverse" not in vars(flow.flow)  # the counting wrapper is gone again
