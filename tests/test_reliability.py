"""Hostile archives, durable writes and checkpoints that try to run code (part of issue 15)."""

import io
import os
import pickle
import tarfile
import zipfile

import pytest
import torch

from genlab.data.archive import safe_extract
from genlab.errors import GenlabError
from genlab.io import atomic_write


def _tar(path, add):
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def _file(tar, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _special(tar, name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    tar.addfile(info)


@pytest.mark.parametrize("add, member, words", [
    (lambda t: _file(t, "/etc/evil"), "/etc/evil", "absolute path"),
    (lambda t: _file(t, "batches/../../evil"), "batches/../../evil", "'..'"),
    (lambda t: _special(t, "batches/link", tarfile.SYMTYPE, "/etc/passwd"), "batches/link", "a link"),
    (lambda t: _special(t, "batches/hard", tarfile.LNKTYPE, "batches/a"), "batches/hard", "a link"),
    (lambda t: _special(t, "batches/dev", tarfile.CHRTYPE), "batches/dev", "device file"),
    (lambda t: _special(t, "batches/fifo", tarfile.FIFOTYPE), "batches/fifo", "device file"),
])
def test_a_hostile_tar_is_refused_naming_the_member_and_nothing_is_written(tmp_path, add, member, words):
    archive = _tar(tmp_path / "cifar-10-python.tar.gz", lambda t: (_file(t, "batches/a"), add(t)))
    target = tmp_path / "out"
    with pytest.raises(GenlabError, match=words) as e:
        safe_extract(archive, target)
    assert repr(member) in str(e.value)
    assert not any(target.rglob("*"))  # checked before anything is extracted
    assert not (tmp_path / "evil").exists()


def test_a_hostile_zip_is_refused_naming_the_member(tmp_path):
    for name, words in (("../evil.jpg", "'..'"), ("/abs/evil.jpg", "absolute path"), ("C:\\evil.jpg", "absolute")):
        archive = tmp_path / "img_align_celeba.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("img_align_celeba/000001.jpg", b"jpg")
            zf.writestr(zipfile.ZipInfo(name), b"evil")
        with pytest.raises(GenlabError, match=words):
            safe_extract(archive, tmp_path / "out")
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("img_align_celeba/link")
        info.external_attr = (0o120777 << 16)  # a symbolic link, as Unix zip records one
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(GenlabError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")


def test_a_well_formed_archive_extracts(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", lambda t: (_file(t, "cifar-10-batches-py/data_batch_1", b"abc"),))
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "cifar-10-batches-py" / "data_batch_1").read_bytes() == b"abc"
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b not really")
    with pytest.raises(GenlabError, match="junk.tar.gz"):
        safe_extract(tmp_path / "junk.tar.gz", tmp_path / "out")


def test_atomic_writes_fsync_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(a, b):
        events.append(("rename", os.path.basename(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "last.pt"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"state"), "checkpoint")
    assert target.read_bytes() == b"state"
    assert [kind for kind, _ in events] == ["fsync", "rename", "fsync"]
    assert events[0][1].startswith("last.pt.tmp-") and events[2][1] == tmp_path.name


class _Payload:
    def __reduce__(self):
        return (open, (MARKER, "w"))


MARKER = ""


def test_a_checkpoint_crafted_to_run_code_is_refused_and_runs_nothing(tmp_path, cli):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "genlab-checkpoint", "x": _Payload()}, f)
    torch.save({"format": "genlab-checkpoint", "x": _Payload()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        code, _, err = cli("sample", tmp_path / name, "--n", "1", "--out", tmp_path / "x.png")
        assert code == 2 and "not a readable genlab checkpoint" in err
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_of_a_newer_format_is_refused_naming_both_versions(tmp_path, cli):
    from genlab.train.checkpoint import FORMAT, FORMAT_VERSION

    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION + 1, "genlab_version": "9.0"}, tmp_path / "new.pt")
    code, _, err = cli("sample", tmp_path / "new.pt", "--n", "1", "--out", tmp_path / "x.png")
    assert code == 2 and "newer genlab" in err and f"format {FORMAT_VERSION + 1}" in err and f"reads {FORMAT_VERSION}" in err


# ------------------------------------------------------------------ real processes: kills and signals
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from genlab.api import train as start_training  # noqa: E402
from genlab.resolve import load_config  # noqa: E402
from genlab.train.checkpoint import load_checkpoint  # noqa: E402

CPU = torch.device("cpu")
TRAIN = ["train", "tiny-vae", "--quiet", "train.epochs=4", "train.checkpoint_every=2", "train.grid_every=1",
         "eval.every=1", "eval.metrics=[swd]", "eval.n=16"]

# Each kill point: code run inside the child before `genlab train`, replacing one function by one
# that SIGKILLs the process at that moment (on its n-th call), so the death is real and exactly placed.
KILLERS = {
    "step": """
from genlab.methods.vae import VAEMethod
orig, calls = VAEMethod.train_step, [0]
def step(self, x, s):
    calls[0] += 1
    if calls[0] == 7: os.kill(os.getpid(), signal.SIGKILL)
    return orig(self, x, s)
VAEMethod.train_step = step
""",
    "checkpoint": """
import genlab.train.checkpoint as c
orig, calls = c.torch.save, [0]
def save(obj, path, *a, **k):
    calls[0] += 1
    orig(obj, path, *a, **k)
    if calls[0] == 5:  # the third checkpoint's full state: half written, then the kill
        size = os.path.getsize(path)
        with open(path, "r+b") as f: f.truncate(size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
c.torch.save = save
""",
    "grid": """
import genlab.train.loop as l
orig, calls = l.save_grid, [0]
def grid(g, path):
    calls[0] += 1
    if calls[0] == 2: os.kill(os.getpid(), signal.SIGKILL)
    return orig(g, path)
l.save_grid = grid
""",
    "evaluation": """
import genlab.train.loop as l
orig, calls = l.Trainer._evaluate, [0]
def evaluate(self):
    calls[0] += 1
    if calls[0] == 2: os.kill(os.getpid(), signal.SIGKILL)  # the second epoch's evaluation
    return orig(self)
l.Trainer._evaluate = evaluate
""",
    "stats": """
import genlab.train.rundir as r
orig, calls = r.StatsWriter.write, [0]
def write(self, record):
    calls[0] += 1
    if calls[0] == 6:  # a torn line: half a record reaches the file, then the kill
        self.file.write(json.dumps(record)[:17]); self.file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(self, record)
r.StatsWriter.write = write
""",
}


def run_child(prelude: str, args: list, wait: bool = True):
    code = ("import os, sys, json, signal\n" + prelude +
            "\nfrom genlab.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err
    return proc


def train_records(run: Path):
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s", "eval_seconds")} for r in records
            if r["kind"] != "resume"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    start_training(load_config("tiny-vae", TRAIN[3:]), out.parent, CPU, quiet=True, run_dir=out)
    return out


@pytest.mark.parametrize("point", sorted(KILLERS))
def test_a_sigkilled_run_resumes_to_the_same_parameters_and_logs_bit_for_bit(tmp_path, cli, straight, point):
    run = tmp_path / "run"
    code, _, err = run_child(KILLERS[point], [*TRAIN, "--run-dir", run])
    assert code == -signal.SIGKILL, err
    last = run / "checkpoints" / "last.pt"
    before = load_checkpoint(last)["progress"]["step"]  # every file on disk is readable after the kill
    assert 0 < before < 20
    assert not list((run / "checkpoints").glob("*.tmp-*")) or point == "checkpoint"
    code, _, err = cli(*TRAIN, "--run-dir", run)  # the re-queued job: the same command
    assert code == 0, err
    if point == "stats":
        assert "one of them a torn line" in (run / "log.txt").read_text()
    a, b = load_checkpoint(straight / "checkpoints" / "last.pt"), load_checkpoint(last)
    for net in ("encoder", "decoder"):
        for k, v in a["state"]["networks"][net].items():
            assert torch.equal(v, b["state"]["networks"][net][k]), (net, k)
    assert train_records(run) == train_records(straight)
    from PIL import Image

    for png in (run / "samples").glob("*.png"):
        Image.open(png).verify()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_finish_the_step_save_and_exit_with_their_codes(tmp_path, cli, sig, code):
    run = tmp_path / "run"
    proc = run_child("", ["train", "tiny-vae", "--quiet", "--run-dir", run, "train.epochs=100000",
                          "train.log_every=1", "data.limit=null"], wait=False)
    stats = run / "stats.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not stats.exists() or stats.read_text().count('"train"') < 3):
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"stopped by {signal.Signals(sig).name}" in err and f"genlab train --resume {run}" in err
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["progress"]
    assert saved["step"] >= 3
    assert json.loads((run / "metrics.json").read_text())["train"]["stopped_because"] == signal.Signals(sig).name
    code2, _, err2 = cli("train", "--resume", run, "train.epochs=1")  # it continues from the saved position
    assert code2 == 0, err2


def test_run_dir_starts_resumes_and_refuses_another_config(tmp_path, cli):
    run = tmp_path / "named"
    code, _, err = cli("train", "tiny-vae", "--quiet", "--run-dir", run, "train.epochs=1")
    assert code == 0, err and (run / "checkpoints" / "last.pt").is_file()
    code, _, err = cli("train", "tiny-vae", "--quiet", "--run-dir", run, "train.epochs=2")
    assert code == 0, err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["named"]  # no second directory
    code, _, err = cli("train", "tiny-vae", "--quiet", "--run-dir", run, "model.latent_dim=4")
    assert code == 2 and "another configuration" in err and "model.latent_dim (8 there, 4 here)" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = cli("train", "tiny-vae", "--run-dir", tmp_path / "other")
    assert code == 2 and "not a genlab run directory" in err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------ divergence
from genlab.methods import METHODS  # noqa: E402
from genlab.methods.vae import VAEMethod  # noqa: E402

NAN_AT: dict = {"steps": set(), "calls": 0}


@METHODS.register("nan-vae")
class NaNVAE(VAEMethod):
    """A VAE that, on the configured training-step calls, poisons a weight so the loss is NaN (test only)."""

    name = "nan-vae"

    def train_step(self, x, step):
        NAN_AT["calls"] += 1
        stats = super().train_step(x, step)
        if NAN_AT["calls"] in NAN_AT["steps"] or ("from" in NAN_AT and NAN_AT["calls"] >= NAN_AT["from"]):
            with torch.no_grad():
                next(self.decoder.parameters()).fill_(float("nan"))
            stats["loss"] = torch.tensor(float("nan"))
        return stats


def poisoned(tmp_path, calls=(), from_call=None, *overrides):
    NAN_AT.clear()
    NAN_AT.update({"steps": set(calls), "calls": 0})
    if from_call is not None:
        NAN_AT["from"] = from_call
    cfg = load_config("tiny-vae", ["method=nan-vae", "train.epochs=4", "train.checkpoint_every=1",
                                   "train.log_every=3", *overrides])
    return start_training(cfg, tmp_path, CPU, quiet=True)


def all_checkpoints_finite(run):
    for path in (run / "checkpoints").glob("*.pt"):
        state = load_checkpoint(path)
        for nets in [state["state"]["networks"]] + ([state["ema"]["networks"]] if state.get("ema") else []):
            for net in nets.values():
                assert all(torch.isfinite(t).all() for t in net.values() if t.is_floating_point()), path


def test_a_nan_rolls_back_to_the_last_checkpoint_with_lower_learning_rates(tmp_path):
    from genlab.train.session import exit_code

    run = poisoned(tmp_path, calls=(8,))
    assert exit_code(run) == 0
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    rollbacks = [r for r in records if r["kind"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["from_step"] == 8 and rollbacks[0]["step"] == 7  # caught before saving step 8
    assert "rollback 1 of 3 to step 7" in (run / "log.txt").read_text()
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["progress"]["step"] == 20 and ckpt["progress"]["rollbacks"] == 1
    assert ckpt["state"]["optimizers"]["adam"]["param_groups"][0]["lr"] == pytest.approx(2e-3 * 0.5)
    all_checkpoints_finite(run)


def test_a_run_that_keeps_diverging_stops_with_exit_1_naming_the_step_and_checkpoint(tmp_path, caplog):
    from genlab.train.session import exit_code

    run = poisoned(tmp_path, (), 6)
    assert exit_code(run) == 1
    text = (run / "log.txt").read_text()
    assert "rollback 3 of 3" in text and "stopping after 3 rollbacks" in text and "last.pt" in text
    assert "loss nan" in text
    all_checkpoints_finite(run)
    stop = poisoned(tmp_path, (), 6, "train.on_divergence=stop")
    assert exit_code(stop) == 1 and "rollback" not in (stop / "log.txt").read_text()
    all_checkpoints_finite(stop)


def test_a_checkpoint_is_never_written_from_weights_that_produced_a_nan(tmp_path):
    # a NaN on step 4 with checkpoints every step and losses read every 3 steps: the step-4 save must
    # see it (the device flag is read before every save), not only the read at step 6
    run = poisoned(tmp_path, (4,), None, "train.on_divergence=stop")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == 3
    all_checkpoints_finite(run)


# ------------------------------------------------------------------ full disk
@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS"])
def test_a_failing_save_is_one_clear_error_and_the_previous_checkpoint_survives(tmp_path, cli, monkeypatch, errno_name):
    import errno

    import genlab.train.checkpoint as checkpoint

    real, calls = checkpoint.torch.save, {"n": 0}

    def save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the second checkpoint
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)))
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    run = tmp_path / "run"
    code, _, err = cli("train", "tiny-vae", "--quiet", "--run-dir", run)
    assert code == 2
    last_line = err.strip().splitlines()[-1]
    assert err.count("genlab: error") == 1 and "Traceback" not in err
    assert last_line.startswith("genlab: error: could not write checkpoint") and str(run / "checkpoints" / "last.pt") in last_line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == 5
    assert not list((run / "checkpoints").glob("*.tmp-*"))


@pytest.mark.parametrize("size", ["8k", "40k", "600k"])  # full at the first events file, an image, a checkpoint
def test_a_real_full_tmpfs(tmp_path, cli, size):
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or 'not permitted'}); "
                    "the failing-write test above covers the same path")
    try:
        code, _, err = cli("train", "tiny-vae", "--quiet", "--run-dir", mount / "run", "train.epochs=50")
        # the disk fills at whichever write comes first (events, an image, a checkpoint, stats): one named line
        last_line = err.strip().splitlines()[-1]
        assert code == 2 and "Traceback" not in err and "Logging error" not in err
        assert last_line.startswith("genlab: error: could not write ") and "No space left on device" in last_line
        assert str(mount) in last_line
        last = mount / "run" / "checkpoints" / "last.pt"
        if last.exists():
            load_checkpoint(last)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# ------------------------------------------------------------------ the data cache checks itself
import logging  # noqa: E402

import numpy as np  # noqa: E402

from genlab.config import DataConfig  # noqa: E402
from genlab.data.cache import prepare, read_meta, verify_cache  # noqa: E402


def digits(tmp_path, **kw):
    return DataConfig(source="digits", size=8, channels=1, limit=300, cache_dir=str(tmp_path / "cache"), **kw)


@pytest.mark.parametrize("damage", ["truncate", "overwrite-head", "delete"])
def test_a_damaged_cache_is_detected_reported_and_rebuilt(tmp_path, caplog, damage):
    path = prepare(digits(tmp_path))
    good = np.load(path / "train.npy")
    target = path / "train.npy"
    if damage == "truncate":
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size - 100)
    elif damage == "overwrite-head":
        with open(target, "r+b") as f:
            f.seek(200)
            f.write(b"\xff" * 64)
    else:
        target.unlink()
    assert verify_cache(path, read_meta(path)) is not None
    with pytest.raises(GenlabError, match="damaged"):
        prepare(digits(tmp_path, strict=True))
    with caplog.at_level(logging.WARNING, logger="genlab"):
        assert prepare(digits(tmp_path)) == path
    assert "is damaged" in caplog.text and "train.npy" in caplog.text
    assert np.array_equal(np.load(path / "train.npy"), good)
    assert verify_cache(path, read_meta(path)) is None


def test_two_processes_preparing_the_same_cache_end_with_one_valid_cache(tmp_path):
    env = {**os.environ, "GENLAB_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "genlab", "data", "prepare", "digits", "size=16", "channels=1"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    caches = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(caches) == 1 and not list((tmp_path / "cache").glob("*.tmp-*"))
    assert verify_cache(caches[0], read_meta(caches[0])) is None
    logs = results[0][1] + results[1][1]
    assert logs.count("decoding") == 1 and "using cache" in logs  # one built it, the other used it


# ------------------------------------------------------------------ property-based: overrides and files
import struct  # noqa: E402
import zlib  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from genlab.config import Config, _valid_keys  # noqa: E402

VALID_KEYS = [k for k in _valid_keys(Config) if k not in ("model", "sampler")] + [
    "model.latent_dim", "model.optim.lr", "model.widths", "sampler.temperature", "sampler.name", "init.from_run"]
VALUES = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12), st.sampled_from(["null", "true", "[]", "[1, 2]", "{}", "{a: 1}", "1e400", "-0", "'x'", "]["]),
)
KEYS = st.one_of(st.sampled_from(VALID_KEYS), st.text(max_size=20),
                 st.lists(st.sampled_from(["model", "train", "data", "x", "", "optim", "é"]), min_size=1,
                          max_size=4).map(".".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=3))
def test_random_overrides_give_a_config_or_one_line_error_never_a_traceback(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        load_config("tiny-vae", overrides)
    except GenlabError as e:
        assert str(e) and "\n" not in str(e).strip()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (a decompression bomb's shape), with a tiny body."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write_good_images(folder, n=3):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, mode in enumerate(["RGB", "L", "CMYK", "1", "I;16", "LA", "P", "F"][:max(n, 1)]):
        Image.new(mode, (20, 24)).save(folder / f"good{i}.{'tiff' if mode in ('CMYK', 'I;16', 'F') else 'png'}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from([".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tiff", ".webp", ".pgm"]),
                          st.binary(max_size=300)), min_size=1, max_size=6))
def test_random_bytes_in_a_data_folder_are_skipped_and_named(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("hostile") / "faces"
    write_good_images(folder, 8)
    for i, (suffix, data) in enumerate(files):
        (folder / f"bad{i}{suffix}").write_bytes(data)
    cfg = DataConfig(source="folder", root=str(folder), size=8, channels=3, workers=1, val_fraction=0.0,
                     cache_dir=str(folder.parent / "cache"))
    path = prepare(cfg)
    meta = read_meta(path)
    assert meta["counts"]["train"] >= 8
    skipped = {name for name, _ in meta["skipped"]}
    assert meta["counts"]["train"] + len(skipped) == 8 + len(files)
    assert all(name.startswith("bad") for name in skipped)


def test_a_decompression_bomb_and_truncated_files_are_skipped_within_bounded_memory(tmp_path):
    import resource

    folder = tmp_path / "faces"
    write_good_images(folder, 2)
    (folder / "bomb.png").write_bytes(png_declaring(60_000, 60_000))  # 3.6 gigapixels: 10.8 GB as RGB
    (folder / "wide.png").write_bytes(png_declaring(9_000, 9_000))  # 81 megapixels: under PIL's own limit
    good = (folder / "good0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.jpg").write_text("not an image")
    (folder / "locked.png").write_bytes(good)
    os.chmod(folder / "locked.png", 0o000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = DataConfig(source="folder", root=str(folder), size=8, channels=3, workers=1, val_fraction=0.0,
                     cache_dir=str(tmp_path / "cache"))
    start = time.time()
    meta = read_meta(prepare(cfg))
    assert time.time() - start < 60
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, grown_mb
    reasons = dict(meta["skipped"])
    assert {"bomb.png", "wide.png", "truncated.png", "notes.jpg"} <= set(reasons)
    assert "decompression bomb" in reasons["bomb.png"] and "decompression bomb" in reasons["wide.png"]


def test_the_train_help_names_every_key_a_resume_may_change():
    from genlab.cli.train import TRAIN_EXAMPLES
    from genlab.train.session import RESUMABLE_KEYS

    text = " ".join(TRAIN_EXAMPLES.split())
    assert all(key in text for key in RESUMABLE_KEYS)
