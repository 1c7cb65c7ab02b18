"""Analyses (each writes analysis/NAME.png and NAME.json), genlab summary, and the HTML report,
opened in a real headless browser."""

import json
import math

import pytest
import torch

from genlab.analysis import commands, latent
from genlab.analysis.curves import smooth
from genlab.api import train as start_training
from genlab.errors import GenlabError
from genlab.report.build import build_report, flag_mismatches, protocol_parts
from genlab.resolve import load_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    vae = start_training(load_config("tiny-vae", ["train.epochs=3"]), root, CPU, quiet=True)
    gan = start_training(load_config("tiny-dcgan", ["train.epochs=3"]), root, CPU, quiet=True)
    return {"vae": vae, "gan": gan}


def test_slerp_stays_on_the_sphere_and_ends_at_both_points():
    a, b = torch.randn(64), torch.randn(64)
    b = b / b.norm() * a.norm()
    path = latent.slerp(a, b, torch.linspace(0, 1, 7))
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    assert torch.allclose(path.norm(dim=1), a.norm().expand(7), rtol=1e-4)  # equal norms stay equal
    straight = latent.lerp(a, b, torch.linspace(0, 1, 7))
    assert straight[3].norm() < path[3].norm()  # the straight line cuts inside


def test_smoothing_is_tensorboards_debiased_ema():
    assert smooth([5.0, 5.0, 5.0]) == pytest.approx([5.0, 5.0, 5.0])  # debiased: a constant stays put
    out = smooth([0.0, 1.0], 0.5)
    assert out == pytest.approx([0.0, (0.5 * 0.5 * 0 + 0.5 * 1) / 0.75])


def test_interpolation_between_seeds_starts_and_ends_at_their_samples(runs):
    from genlab.train.rundir import find_checkpoint

    path, numbers = commands.interpolation(runs["gan"], CPU, seeds=(3, 8), steps=5)
    assert path.name == "interpolation-seeds-3-8.png" and path.is_file()
    assert json.loads(path.with_suffix(".json").read_text())["seeds"] == [3, 8]
    method, _, _ = commands.load_run(runs["gan"], CPU)
    a, b = latent.seed_latents(method, [3, 8])
    images = latent.interpolate(method, a, b, 5, spherical=True)
    assert torch.equal(images[0], method.sample(1, 3)[0]) and torch.equal(images[-1], method.sample(1, 8)[0])
    assert find_checkpoint(runs["gan"], "last").is_file()


def test_interpolation_between_real_images_and_traversal_of_a_vae(runs):
    path, numbers = commands.interpolation(runs["vae"], CPU, images=(0, 2), steps=4)
    assert path.name == "interpolation-val-0-2.png" and numbers["images"] == [0, 2]
    path, numbers = commands.traversal(runs["vae"], CPU, dims=3, steps=5)
    kl = numbers["all_dimensions_mean_kl_nats"]
    assert numbers["rows_dimensions"] == sorted(range(len(kl)), key=lambda d: -kl[d])[:3]
    assert numbers["rows_mean_kl_nats"] == sorted(numbers["rows_mean_kl_nats"], reverse=True)
    with pytest.raises(GenlabError, match="traversal needs an encoder family"):
        commands.traversal(runs["gan"], CPU)


def test_variations_grow_with_their_scale(runs):
    _, small = commands.variations(runs["vae"], CPU, seed=2, n=6, scale=0.05)
    _, large = commands.variations(runs["vae"], CPU, seed=2, n=6, scale=2.0)
    assert small["mean_rms_pixel_distance_0_255"] < large["mean_rms_pixel_distance_0_255"]


def test_timeline_and_curves_read_what_the_run_wrote(runs):
    path, numbers = commands.timeline(runs["gan"], [1, 3])
    assert numbers["epochs"] == [1, 3] and numbers["files"] == ["samples/epoch-0001.png", "samples/epoch-0003.png"]
    with pytest.raises(GenlabError, match=r"no sample grid for epoch\(s\) 7; this run has grids for epochs 1, 2, 3"):
        commands.timeline(runs["gan"], [7])
    path, numbers = commands.curves(runs["vae"])
    stats = [json.loads(l) for l in (runs["vae"] / "stats.jsonl").read_text().splitlines()]
    last_train = [s for s in stats if s["kind"] == "train"][-1]
    last_epoch = [s for s in stats if s["kind"] == "epoch"][-1]
    assert numbers["quantities"]["kl"][runs["vae"].name]["last"] == pytest.approx(last_train["kl"])
    assert numbers["quantities"]["recon"][runs["vae"].name]["last_validation"] == pytest.approx(last_epoch["val_recon"])
    assert path.stat().st_size > 0


def test_summary_counts_parameters_and_multiply_adds(runs):
    from genlab.methods import build_method

    text, numbers, written = commands.summary("tiny-dcgan", CPU)
    cfg = load_config("tiny-dcgan")
    method = build_method(cfg, (1, 16, 16), CPU)
    for name, net in method.networks().items():
        assert numbers["networks"][name]["parameters"] == sum(p.numel() for p in net.parameters())
        assert numbers["networks"][name]["mult_adds_per_image"] > 0
    assert "ConvTranspose2d" in text and written is None
    _, _, written = commands.summary(str(runs["vae"]), CPU)
    assert written == runs["vae"] / "analysis" / "summary.txt"


def test_protocol_mismatches_are_flagged_not_compared():
    base = ("64 of 64 samples of vae last-inference.pt at step 10, raw weights (seeds 0..63, sampler latent) vs 64 "
            "random of digits train split (auto, seed 42), 161 images, 16x16 bicubic, 1 ch | Laplacian pyramid")
    other_run = base.replace("vae last-inference.pt at step 10", "gan last-inference.pt at step 99")
    other_data = base.replace("digits train split", "celeba train split")
    fewer = base.replace("64 of 64 samples", "32 of 32 samples")
    assert protocol_parts("swd", base) == protocol_parts("swd", other_run)
    rows = [{"cells": {"swd": {"value": 1.0, "protocol": p}}} for p in (base, other_run, other_data, fewer)]
    flag_mismatches(rows, ["swd"])
    assert "mismatch" not in rows[1]["cells"]["swd"]
    assert "data differ" in rows[2]["cells"]["swd"]["mismatch"]
    assert "sample count" in rows[3]["cells"]["swd"]["mismatch"]


def test_report_opens_in_a_real_browser_with_every_image_and_number(runs, tmp_path, cli, browser):
    for run in runs.values():
        assert cli("eval", run, "--metrics", "swd", "--n", "32")[0] == 0
    commands.curves(runs["vae"])
    out = tmp_path / "report.html"
    code, stdout, err = cli("report", runs["vae"], runs["gan"], "--out", out)
    assert code == 0, err
    page = out.read_text()
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # nothing fetched
    browser.get(out.as_uri())
    images = browser.execute_script("return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
    assert len(images) >= 5 and all(done and width > 0 for _, done, width in images), images
    table = browser.find_element("id", "comparison").text
    for run in runs.values():
        swd = json.loads((run / "metrics.json").read_text())["eval"]["swd"]["value"]
        assert run.name in table and f"{swd:.4g}" in table
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert browser.save_screenshot(str(tmp_path / "report.png")) and (tmp_path / "report.png").stat().st_size > 10_000


def test_report_sections_skip_with_a_line_and_bad_paths_are_refused(runs, tmp_path, cli):
    html = build_report([runs["gan"]])
    assert "Reconstructions skipped" in html and "only families with an encoder write them" in html
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    for path, words in ((tmp_path / "empty", "is empty"), (tmp_path / "other", "is not a run directory"),
                        (tmp_path / "missing", "no such run")):
        code, _, err = cli("report", path, "--out", tmp_path / "r.html")
        assert code == 2 and words in err and not (tmp_path / "r.html").exists()


def test_a_run_still_training_is_reported_as_in_progress(runs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs["vae"], copy)
    (copy / "metrics.json").unlink()
    html = build_report([copy])
    assert "in progress" in html and "No training summary yet" in html


def test_analysis_commands_from_the_cli(runs, cli, tmp_path):
    for args in (("timeline", runs["gan"]), ("curves", runs["gan"]), ("interpolate", runs["vae"], "--seeds", "1,2"),
                 ("variations", runs["gan"], "--n", "4"), ("traversal", runs["vae"], "--dims", "2")):
        code, out, err = cli("analyze", *args)
        assert code == 0 and "wrote" in out, err
    code, out, err = cli("summary", "tiny-vae")
    assert code == 0 and "multiply-adds per image" in out
    code, out, err = cli("sample", runs["gan"], "--n", "3", "--seed", "5", "--out", f"{tmp_path / 'pngs'}/")
    assert code == 0 and sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["000005.png", "000006.png", "000007.png"]
    code, _, err = cli("sample", runs["gan"], "--n", "3", "--out", f"{tmp_path / 'pngs'}/")
    assert code == 2 and "already holds 3 PNG files" in err
    code, out, err = cli("reconstruct", runs["vae"], "--n", "3", "--split", "val", "--random", "--seed", "1")
    assert code == 0 and (runs["vae"] / "analysis" / "reconstructions-val.png").is_file()
    numbers = json.loads((runs["vae"] / "analysis" / "reconstructions-val.json").read_text())
    assert numbers["choice"] == "random, seed 1" and len(numbers["mse"]) == 3
    assert all(0 <= m <= 1 for m in numbers["mse"]) and math.isclose(numbers["mean"]["mse"], sum(numbers["mse"]) / 3,
                                                                     rel_tol=1e-5)
    code, _, err = cli("analyze", "interpolate", runs["vae"])
    assert code == 2 and "give either two seeds" in err


def test_a_metric_without_a_reference_compares_its_protocol_without_the_run():
    a = ("mean MS-SSIM of 2000 random pairs within 2000 samples of vae last-inference.pt at step 320, raw weights "
         "(seeds 0..1999, sampler latent(temperature=1.0), uint8) ('real': within celeba train split); 3 scales")
    b = a.replace("vae last-inference.pt at step 320, raw weights", "gan best-inference.pt at step 9, EMA weights (decay 0.999)")
    c = a.replace("2000 random pairs", "500 random pairs")
    rows = [{"cells": {"msssim": {"value": 0.3, "protocol": p}}} for p in (a, b, c)]
    flag_mismatches(rows, ["msssim"])
    assert "mismatch" not in rows[1]["cells"]["msssim"] and "mismatch" in rows[2]["cells"]["msssim"]


def test_every_command_and_subcommand_prints_its_help(cli):
    from genlab.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        code = None
        try:
            cli(name, "--help")
        except SystemExit as e:
            code = e.code
        assert code == 0, name
        nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        for action in (nested[0].choices if nested else []):
            try:
                cli(name, action, "--help")
            except SystemExit as e:
                assert e.code == 0, f"{name} {action}"
