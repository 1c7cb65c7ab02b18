"""Sweeps: grids refused before any run starts, a local sweep end to end with its results equal to
its runs' numbers, --resume keeping finished runs, the Ray runner on a local single-node instance,
and the shipped sweeps planning the runs their reports made."""

import json

import pytest

from genlab import sweep
from genlab.errors import GenlabError
from genlab.sweep.runners import LocalRunner, RayRunner

FAST = ["train.epochs=1", "data.limit=120"]


def test_grid_and_seed_parsing():
    assert sweep.parse_grid(["model.kl_weight=0.001,0.01", "model.widths=[8,16],[16,32]"]) == {
        "model.kl_weight": [0.001, 0.01], "model.widths": [[8, 16], [16, 32]]}
    assert sweep.parse_seeds("0,1,2") == [0, 1, 2]
    for bad, words in ((["kl_weight"], "must look like key=value1,value2"), (["a=1", "a=2"], "names 'a' twice"),
                       (["train.seed=1,2"], "give seeds with --seeds")):
        with pytest.raises(GenlabError, match=words):
            sweep.parse_grid(bad)
    with pytest.raises(GenlabError, match="distinct integers"):
        sweep.parse_seeds("1,1")


@pytest.mark.parametrize("grid, words", [
    (["model.kl_wieght=0.1,1"], "--grid model.kl_wieght: unknown config key 'model.kl_wieght'"),
    (["model.latent_dim=8,many"], "--grid model.latent_dim: config key 'model.latent_dim' expects int, got 'many'"),
])
def test_a_bad_grid_is_refused_before_any_run_starts(tmp_path, cli, grid, words):
    args = [a for g in grid for a in ("--grid", g)]
    code, _, err = cli("sweep", "tiny-vae", *args, "--out", tmp_path / "s")
    assert code == 2 and words in err and "refused before any run started" in err
    assert not (tmp_path / "s").exists()


def test_parallel_zero_and_non_sweep_folders_are_refused(tmp_path, cli):
    code, _, err = cli("sweep", "tiny-vae", "--parallel", "0", "--out", tmp_path / "s")
    assert code == 2 and "--parallel must be at least 1" in err
    (tmp_path / "x").mkdir()
    code, _, err = cli("sweep", "--resume", tmp_path / "x")
    assert code == 2 and "is not a sweep folder (no sweep.json)" in err


def test_local_sweep_end_to_end_then_resume_keeps_finished_runs(tmp_path, cli):
    out = tmp_path / "s"
    code, stdout, err = cli("sweep", "tiny-vae", *FAST, "--grid", "model.kl_weight=0.1,1.0", "--seeds", "0",
                            "--parallel", "2", "--eval-n", "32", "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["finished", "finished"]
    results = json.loads((out / "results.json").read_text())
    choice = {}
    for point in results["points"]:
        (run,) = [r for r in manifest["runs"] if r["point"] == point["point"]]
        by_split = json.loads((out / "runs" / run["name"] / "metrics.json").read_text())["eval_by_split"]
        report, chosen_on = by_split["report"]["swd"], by_split["choice"]["swd"]
        assert report["split"] == "test" and chosen_on["split"] == "val"  # decided on one, reported on the other
        assert point["stats"]["swd"] | {} == {"mean": report["value"], "min": report["value"], "max": report["value"],
                                            "n": 1, "std": None, "half_width": None, "low": None, "high": None,
                                            "confidence": 0.95}
        choice[point["label"]] = chosen_on["value"]
    selection = results["selection"]["swd"]
    assert selection["chosen"] == min(choice, key=choice.get)
    assert sorted(selection["marks"].values()) == ["1 seed: no interval", "chosen"]
    assert "(1 seed)" in stdout and "[chosen]" in stdout
    assert (out / "sweep.png").stat().st_size > 0 and "Sweep s" in (out / "report.html").read_text()
    # Interrupted: one run lost its report-split evaluation. --resume redoes only that one.
    first, second = manifest["runs"]
    kept = (out / "runs" / first["name"] / "checkpoints" / "last.pt").stat().st_mtime_ns
    metrics = out / "runs" / second["name"] / "metrics.json"
    summary = json.loads(metrics.read_text())
    del summary["eval_by_split"]["report"]
    metrics.write_text(json.dumps(summary))
    code, stdout, err = cli("sweep", "--resume", out)
    assert code == 0, err
    assert (out / "runs" / first["name"] / "checkpoints" / "last.pt").stat().st_mtime_ns == kept
    assert "swd" in json.loads(metrics.read_text())["eval_by_split"]["report"]
    assert "2 of 2 runs finished" in stdout


def test_the_ray_runner_runs_a_sweep_on_a_local_instance(tmp_path):
    pytest.importorskip("ray", reason="Ray is the optional extra genlab[ray] (installed by the test extra)")
    spec = sweep.SweepSpec(preset="tiny-vae", grid={"model.kl_weight": [0.5]}, seeds=[0, 1], overrides=FAST,
                           metrics=["swd"], eval_n=32, name="ray")
    results = sweep.start(spec, tmp_path / "ray", RayRunner(address=None, cpus=1), device="cpu")
    assert results["finished"] == results["total"] == 2
    (point,) = results["points"]
    assert point["n"] == 2 and point["stats"]["swd"]["min"] <= point["stats"]["swd"]["mean"] <= point["stats"]["swd"]["max"]
    assert point["stats"]["swd"]["half_width"] > 0  # two seeds: an interval


class _StopsAfterOne(LocalRunner):
    """A sweep that was killed after its first run."""

    def run(self, jobs, logs, done):
        name = next(iter(jobs))
        super().run({name: jobs[name]}, logs, done)


def test_an_interrupted_sweep_resumes_its_unstarted_runs(tmp_path):
    spec = sweep.SweepSpec(preset="tiny-dcgan", grid={"model.latent_dim": [4, 8]}, seeds=[0], overrides=FAST,
                           metrics=["swd"], eval_n=32, name="cut")
    results = sweep.start(spec, tmp_path / "cut", _StopsAfterOne(1), device="cpu")
    assert results["finished"] == 1
    with pytest.raises(GenlabError, match="already holds a sweep; continue it with genlab sweep --resume"):
        sweep.start(spec, tmp_path / "cut", LocalRunner(1))
    results = sweep.execute(tmp_path / "cut", LocalRunner(1))
    assert results["finished"] == 2


@pytest.mark.parametrize("name, runs", [("vae-kl-seed001", 2), ("vae-kl-seed004", 4), ("vae-latent-seed003", 4),
                                        ("gan-latent-seed003", 3), ("gan-seeds-seed004", 3)])
def test_shipped_sweeps_plan_the_runs_of_their_reports(name, runs):
    spec = sweep.load_sweep_preset(name)
    entries = sweep.plan(spec)
    assert len(entries) == runs and spec.description
    if name == "gan-seeds-seed004":
        assert [e["seed"] for e in entries] == [0, 1, 2]
    if name == "vae-latent-seed003":
        assert [e["point"]["model.latent_dim"] for e in entries] == [10, 128, 512, 2048]
