"""The genlab command end to end, and every bad input: one line, exit code 2, nothing lost."""

import errno
import hashlib
import subprocess
import sys

import pytest
import torch
from conftest import only_run
from PIL import Image


def digest(folder):
    """Content hash of every file below ``folder``: proves that nothing changed."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.startswith("genlab: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def tiny_run(cli, tmp_path):
    runs = tmp_path / "runs"
    code, _, _ = cli("train", "tiny-vae", "--runs-dir", runs, "--quiet")
    assert code == 0
    return only_run(runs)


def test_train_resume_sample_reconstruct_round_trip(cli, tmp_path):
    runs = tmp_path / "runs"
    code, _, err = cli("train", "tiny-vae", "train.epochs=1", "--runs-dir", runs)
    assert code == 0, err
    run = only_run(runs)
    assert run.name == "00000-tiny-vae-digits"
    assert "step" in err  # the progress bar and log lines go to stderr

    code, _, err = cli("train", "--resume", run, "train.epochs=2", "--quiet")
    assert code == 0, err
    assert "resuming" in (run / "log.txt").read_text()
    assert (run / "samples" / "epoch-0002.png").is_file()

    grid = tmp_path / "grid.png"
    code, _, err = cli("sample", run, "--n", 9, "--out", grid, "--seed", 7)
    assert code == 0, err
    # 3 x 3 grid of 16 px images with 2 px padding
    assert Image.open(grid).size == (3 * 18 + 2, 3 * 18 + 2)

    npz = tmp_path / "s.npz"
    assert cli("sample", run / "checkpoints" / "best.pt", "--n", 4, "--out", npz, "--seed", 7)[0] == 0
    import numpy as np

    arrays = np.load(npz)
    assert arrays["images"].shape == (4, 1, 16, 16) and arrays["images"].dtype == np.uint8
    assert list(arrays["seeds"]) == [7, 8, 9, 10]

    recon = tmp_path / "recon.png"
    code, out, err = cli("reconstruct", run, "--n", 4, "--out", recon)
    assert code == 0, err
    assert recon.is_file()
    rows = [l.split() for l in out.splitlines()[1:5]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"] and all(0 <= float(r[1]) <= 4 for r in rows)


def test_sample_is_reproducible_from_the_checkpoint_alone(cli, tiny_run, tmp_path):
    ckpt = tmp_path / "moved.pt"
    ckpt.write_bytes((tiny_run / "checkpoints" / "last.pt").read_bytes())
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert cli("sample", ckpt, "--n", 6, "--out", a)[0] == 0
    assert cli("sample", tiny_run, "--n", 6, "--out", b, "--batch-size", 4)[0] == 0
    import numpy as np

    assert np.array_equal(np.load(a)["images"], np.load(b)["images"])


def test_quiet_leaves_only_the_log(cli, tmp_path):
    code, _, err = cli("train", "tiny-dcgan", "train.epochs=1", "--runs-dir", tmp_path, "--quiet")
    assert code == 0
    assert "step/s" not in err and "it/s" not in err
    assert "finished" in err


def test_dry_run_prints_the_resolved_config_and_writes_nothing(cli, tmp_path):
    import yaml

    code, out, _ = cli("train", "quickstart", "model.latent_dim=7", "--dry-run", "--runs-dir", tmp_path / "runs")
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["model"]["latent_dim"] == 7 and cfg["method"] == "vae" and cfg["train"]["batch_size"] == 64
    assert not (tmp_path / "runs").exists()


def test_presets_version_and_help(cli):
    code, out, _ = cli("presets")
    assert code == 0
    lines = out.splitlines()
    assert any(l.startswith("quickstart ") and "vae" in l for l in lines)
    assert len(lines) >= 7
    with pytest.raises(SystemExit) as e:
        cli("--version")
    assert e.value.code == 0
    for command in ("train", "sample", "reconstruct", "presets"):
        with pytest.raises(SystemExit):
            cli(command, "--help")


@pytest.mark.parametrize("command", ["train", "sample", "reconstruct", "presets"])
def test_every_help_shows_a_worked_example(command, capsys):
    from genlab.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"genlab {command}" in out


def test_python_dash_m_works_the_same():
    out = subprocess.run([sys.executable, "-m", "genlab", "--version"], capture_output=True, text=True, check=True)
    import genlab

    assert out.stdout.strip() == f"genlab {genlab.__version__}"


# --------------------------------------------------------------------------- bad input


def test_missing_data_path(cli, tmp_path):
    code, _, err = cli("train", "vae-ck-seed001", f"data.root={tmp_path / 'missing'}", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(code, err, "no such folder", str(tmp_path / "missing"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unset_data_path(cli, tmp_path):
    code, _, err = cli("train", "vae-ck-seed001", "--runs-dir", tmp_path)
    assert_one_line_error(code, err, "data.root is not set")


def test_empty_folder(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = cli("train", "vae-ck-seed001", f"data.root={tmp_path / 'empty'}", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(code, err, "no image files", str(tmp_path / "empty"))


def test_unreadable_folder_of_only_corrupt_images(cli, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"not a jpeg")
    code, _, err = cli("train", "vae-ck-seed001", f"data.root={tmp_path / 'bad'}", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(code, err, "none of the 1 image files")


def test_unknown_preset(cli, tmp_path):
    code, _, err = cli("train", "quikstart", "--runs-dir", tmp_path)
    assert_one_line_error(code, err, "unknown preset 'quikstart'", "quickstart")


def test_unknown_and_mistyped_keys(cli, tmp_path):
    code, _, err = cli("train", "quickstart", "model.latnt_dim=3", "--runs-dir", tmp_path)
    assert_one_line_error(code, err, "model.latnt_dim", "model.latent_dim")
    code, _, err = cli("train", "quickstart", "train.epochs=many", "--runs-dir", tmp_path)
    assert_one_line_error(code, err, "'train.epochs' expects int", "many")
    assert not list(tmp_path.iterdir())


def test_debug_shows_the_traceback(cli, tmp_path):
    from genlab.errors import GenlabError

    with pytest.raises(GenlabError):
        cli("train", "quikstart", "--debug")


def test_resume_on_a_directory_that_is_not_a_run(cli, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    before = digest(tmp_path / "notes")
    code, _, err = cli("train", "--resume", tmp_path / "notes")
    assert_one_line_error(code, err, "is not a genlab run directory", str(tmp_path / "notes"))
    assert digest(tmp_path / "notes") == before
    code, _, err = cli("train", "--resume", tmp_path / "nowhere")
    assert_one_line_error(code, err, "no such run directory")


def test_resume_with_a_checkpoint_of_another_family(cli, tmp_path, tiny_run):
    runs = tmp_path / "gan-runs"
    assert cli("train", "tiny-dcgan", "train.epochs=1", "--runs-dir", runs, "--quiet")[0] == 0
    gan_ckpt = only_run(runs) / "checkpoints" / "last.pt"
    (tiny_run / "checkpoints" / "last.pt").write_bytes(gan_ckpt.read_bytes())
    before = digest(tiny_run)
    code, _, err = cli("train", "--resume", tiny_run, "train.epochs=5")
    assert_one_line_error(code, err, "'gan' checkpoint", "'vae' run")
    assert digest(tiny_run) == before


def test_a_file_that_is_not_a_checkpoint(cli, tmp_path, tiny_run):
    (tiny_run / "checkpoints" / "last.pt").write_bytes(b"garbage")
    (tiny_run / "checkpoints" / "last-inference.pt").write_bytes(b"garbage")
    before = digest(tiny_run)
    code, _, err = cli("sample", tiny_run, "--out", tmp_path / "x.png")  # sample reads the lean snapshot
    assert_one_line_error(code, err, "is not a readable genlab checkpoint", "last-inference.pt")
    code, _, err = cli("sample", tiny_run, "--out", tmp_path / "x.png", "--raw-weights")  # and this the full one
    assert_one_line_error(code, err, "is not a readable genlab checkpoint", "last.pt")
    code, _, err = cli("train", "--resume", tiny_run)
    assert_one_line_error(code, err, "is not a readable genlab checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    code, _, err = cli("sample", tmp_path / "other.pt", "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, "is not a genlab checkpoint")
    assert digest(tiny_run) == before


def test_resume_refuses_changes_that_make_another_experiment(cli, tiny_run):
    before = digest(tiny_run)
    code, _, err = cli("train", "--resume", tiny_run, "model.latent_dim=3")
    assert_one_line_error(code, err, "cannot change 'model.latent_dim' when resuming")
    assert digest(tiny_run) == before


def test_reconstruct_a_family_without_an_encoder(cli, tmp_path):
    runs = tmp_path / "runs"
    assert cli("train", "tiny-dcgan", "train.epochs=1", "--runs-dir", runs, "--quiet")[0] == 0
    code, _, err = cli("reconstruct", only_run(runs), "--out", tmp_path / "r.png")
    assert_one_line_error(code, err, "'gan' model, which has no encoder")
    assert not (tmp_path / "r.png").exists()


def test_sample_never_overwrites_without_force(cli, tmp_path, tiny_run):
    out = tmp_path / "grid.png"
    out.write_bytes(b"precious")
    code, _, err = cli("sample", tiny_run, "--out", out)
    assert_one_line_error(code, err, "exists; pass --force")
    assert out.read_bytes() == b"precious"
    assert cli("sample", tiny_run, "--out", out, "--force")[0] == 0
    assert out.read_bytes() != b"precious"


def test_best_checkpoint_missing_for_a_gan(cli, tmp_path):
    runs = tmp_path / "runs"
    assert cli("train", "tiny-dcgan", "train.epochs=1", "--runs-dir", runs, "--quiet")[0] == 0
    code, _, err = cli("sample", only_run(runs), "--checkpoint", "best", "--out", tmp_path / "g.png")
    assert_one_line_error(code, err, "has no 'best' checkpoint", "last")


def test_cuda_requested_without_cuda(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = cli("train", "tiny-vae", "--device", "cuda", "--runs-dir", tmp_path)
    assert_one_line_error(code, err, "--device cuda: CUDA is not available")


def test_full_disk_keeps_the_last_checkpoint(cli, tiny_run, monkeypatch):
    last = tiny_run / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def no_space(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    code, _, err = cli("train", "--resume", tiny_run, "train.epochs=3", "--quiet")
    assert_one_line_error(code, err, "could not write checkpoint", "last.pt", "No space left on device")
    assert last.read_bytes() == before
    assert not list(last.parent.glob("*.tmp*"))


# --------------------------------------------------------------------------- data commands


def test_data_info_prepare_and_train_from_the_cache(cli, tmp_path, shared_data):
    code, out, err = cli("data", "info", "folder", "--root", shared_data / "ckplus48", "channels=1", "size=16")
    assert code == 0, err
    assert "items    981" in out and "splits   train" in out and "48x48" in out and "modes L" in out
    assert "7 classes" in out and "not prepared" in out
    code, out, err = cli("data", "prepare", "folder", "--root", shared_data / "ckplus48", "channels=1", "size=16")
    assert code == 0, err
    assert "ckplus48: train 895, val 43, test 43" in out and "0 skipped" in out
    code, out, _ = cli("data", "info", "folder", "--root", shared_data / "ckplus48", "channels=1", "size=16")
    assert "cache    ready at" in out
    runs = tmp_path / "runs"
    code, _, err = cli("train", "tiny-vae", "data.source=folder", f"data.root={shared_data / 'ckplus48'}",
                       "data.limit=null", "data.val_fraction=0.1", "train.epochs=1", "--runs-dir", runs, "--quiet")
    assert code == 0, err
    assert "using cache" in err
    assert only_run(runs).name == "00000-tiny-vae-ckplus48"


def test_data_info_counts_what_prepare_will_keep(cli, tmp_path):
    """A folder of 60 good and 2 broken images: info's split counts are prepare's, not the listing's."""
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(60):
        Image.new("L", (20, 20), color=i).save(root / f"ok{i:02d}.png")
    (root / "bad1.png").write_bytes(b"not a png")
    (root / "bad2.jpg").write_bytes(b"\xff\xd8\xff truncated")
    code, info, err = cli("data", "info", "folder", "--root", root, "size=16", "val_fraction=0.1")
    assert code == 0, err
    code, prepared, err = cli("data", "prepare", "folder", "--root", root, "size=16", "val_fraction=0.1")
    assert code == 0 and "2 skipped" in prepared
    counts = prepared.split(": ", 1)[1].split(";")[0]  # "train 54, val 6, test 0"
    splits_line = next(line for line in info.splitlines() if line.startswith("splits"))
    assert splits_line.startswith(f"splits   {counts} (") and "train 60" not in counts
    assert "unusable 2 files left out of the splits" in info
    code, again, _ = cli("data", "info", "folder", "--root", root, "size=16", "val_fraction=0.1")  # from the cache
    assert next(line for line in again.splitlines() if line.startswith("splits")) == splits_line


def test_data_prepare_from_a_preset(cli, tmp_path):
    code, out, err = cli("data", "prepare", "tiny-vae")
    assert code == 0, err
    assert out.startswith("digits: train 1")


def test_data_prepare_strict_on_a_bad_file(cli, tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("L", (20, 20)).save(tmp_path / "imgs" / "ok.png")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"nope")
    code, out, err = cli("data", "prepare", "folder", "--root", tmp_path / "imgs", "size=8")
    assert code == 0 and "1 skipped" in out and "skipped bad.png" in err
    code, _, err = cli("data", "prepare", "folder", "--root", tmp_path / "imgs", "size=16", "--strict")
    assert_one_line_error(code, err, "bad.png")


def test_data_download_offline(cli, tmp_path, monkeypatch):
    from genlab.data import download

    monkeypatch.setattr(download, "_reachable", lambda url: "host is not reachable (no network)")
    code, _, err = cli("data", "download", "cifar10", "--root", tmp_path)
    assert_one_line_error(code, err, "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", str(tmp_path))


def test_data_bad_key_and_missing_root(cli, tmp_path):
    code, _, err = cli("data", "prepare", "celeba", "sise=64", "--root", tmp_path)
    assert_one_line_error(code, err, "data.sise", "data.size")
    code, _, err = cli("data", "info", "celeba", "--root", tmp_path / "none")
    assert_one_line_error(code, err, "no such folder")
    code, _, err = cli("data", "info", "celeba", "--root", tmp_path)
    assert_one_line_error(code, err, "no img_align_celeba/ folder")


def test_training_with_augmentation_and_diffaugment(cli, tmp_path):
    """Each option changes what the networks see: the same seed with and without it gives other
    losses (the augmentations really ran), and a wrong policy name is one clear error."""
    import json

    def train_losses(preset, *overrides):
        runs = tmp_path / f"runs-{len(list(tmp_path.iterdir()))}"
        code, _, err = cli("train", preset, "train.epochs=1", *overrides, "--runs-dir", runs, "--quiet")
        assert code == 0, err
        records = [json.loads(l) for l in (only_run(runs) / "stats.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k.startswith(("loss", "val_"))} for r in records if r["kind"] != "eval"]

    plain_vae = train_losses("tiny-vae")
    assert train_losses("tiny-vae") == plain_vae  # same seed, same numbers: a difference below is the option
    for option in ("data.augment.hflip=true", "data.augment.rotate=10", "data.augment.blur_sigma=1.0",
                   "data.augment.color_jitter=0.2"):
        assert train_losses("tiny-vae", option) != plain_vae, option
    plain_gan = train_losses("tiny-dcgan")
    assert train_losses("tiny-dcgan", "model.diffaugment=color,translation,cutout") != plain_gan
    code, _, err = cli("train", "tiny-dcgan", "model.diffaugment=colour", "--runs-dir", tmp_path / "bad")
    assert_one_line_error(code, err, "unknown policy 'colour'")


def test_a_non_finite_loss_stops_with_exit_1_and_keeps_the_last_good_checkpoint(cli, tmp_path, monkeypatch):
    import json

    from genlab.methods.vae import VAEMethod

    original, calls = VAEMethod.train_step, {"n": 0}

    def diverging(self, x, step):
        calls["n"] += 1
        stats = original(self, x, step)
        return stats if calls["n"] <= 5 else {k: torch.tensor(float("nan")) for k in stats}

    monkeypatch.setattr(VAEMethod, "train_step", diverging)
    code, _, err = cli("train", "tiny-vae", "train.epochs=3", "--runs-dir", tmp_path, "--quiet")
    assert code == 1 and "became non-finite near step 6" in err
    run = only_run(tmp_path)
    assert json.loads((run / "metrics.json").read_text())["train"]["stopped_because"] == "non_finite_loss"
    from genlab.train.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == 5


def test_a_closed_pipe_ends_quietly():
    """`genlab presets | head -1`: when the reader has gone, no error line and no traceback."""
    done = subprocess.Popen([sys.executable, "-m", "genlab", "presets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done.stdout.close()  # the reader is gone before genlab writes a line
    err = done.stderr.read().decode()
    assert done.wait(timeout=120) == 141
    assert err == ""
