"""Data: every layout (from ../shared/data and from files written here), splits, the cache, bad input."""

import errno
import hashlib
import io
import logging
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.config import AugmentConfig, DataConfig
from genlab.data import cache as cache_module
from genlab.data import load_dataset, prepare, to_model_range, to_uint8
from genlab.data.cache import cache_path, list_catalog, read_meta
from genlab.data.splits import assign_splits, ranked_holdout, select_part, threshold_split
from genlab.errors import GenlabError
from genlab.resolve import load_config

RNG = np.random.default_rng(0)


def noise(h, w, c=None):
    shape = (h, w) if c is None else (h, w, c)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def cfg(source="folder", root=None, **kw):
    kw.setdefault("size", 16)
    kw.setdefault("channels", 1)
    return DataConfig(source=source, root=None if root is None else str(root), **kw)


# ------------------------------------------------------------------------------------------- basics


def test_range_conversion_round_trips_every_level():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = to_model_range(levels)
    assert x.min() == -1 and x.max() == 1 and x.dtype == torch.float32
    assert torch.equal(to_uint8(x), levels)
    assert torch.equal(to_uint8(torch.tensor([-5.0, 5.0])), torch.tensor([0, 255], dtype=torch.uint8))


@pytest.mark.parametrize("channels", [1, 3])
def test_digits_is_embedded_and_scaled(channels):
    data = load_dataset(cfg("digits", size=32, channels=channels, val_fraction=0.1))
    assert data.name == "digits"
    assert data.train.dtype == torch.uint8 and data.train.shape[1:] == (channels, 32, 32)
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert 150 < len(data.val) + len(data.test) < 215  # 10% in expectation (hash split), half of it the report split
    assert abs(len(data.val) - len(data.test)) <= 1
    assert data.train.max() == 255 and data.train.min() == 0
    assert set(data.labels["train"].unique().tolist()) == set(range(10))


def test_source_defaults_are_written_into_the_resolved_config():
    c = load_config("quickstart", ["data.source=celeba", "data.root=x", "data.size=null", "data.channels=null"]).data
    assert (c.size, c.channels, c.crop) == (64, 3, 148)
    c = load_config("quickstart", ["data.source=cifar10", "data.root=x", "data.size=null", "data.channels=null"]).data
    assert (c.size, c.channels, c.crop) == (32, 3, None)


# ------------------------------------------------------------------------------------------- splits


def test_threshold_split_is_disjoint_reproducible_and_close_to_the_fractions():
    keys = [f"img{i}.png" for i in range(4000)]
    a = threshold_split(keys, 0.2, 0.1, seed=42)
    assert a == threshold_split(keys, 0.2, 0.1, seed=42)
    assert a != threshold_split(keys, 0.2, 0.1, seed=1)
    shares = {s: a.count(s) / len(a) for s in ("train", "val", "test")}
    assert shares["val"] == pytest.approx(0.2, abs=0.02) and shares["test"] == pytest.approx(0.1, abs=0.015)


def test_split_is_stable_when_the_folder_gains_files():
    old = [f"a/{i}.png" for i in range(500)]
    new = old + [f"b/{i}.png" for i in range(300)]
    before = dict(zip(old, threshold_split(old, 0.2, 0.0, seed=42)))
    after = dict(zip(new, threshold_split(new, 0.2, 0.0, seed=42)))
    assert all(after[k] == before[k] for k in old)


def test_ranked_holdout_is_exact():
    keys = [f"data_batch_1/{i:05d}" for i in range(1000)]
    held = ranked_holdout(keys, 0.2, seed=42)
    assert len(held) == 200 and held == ranked_holdout(keys, 0.2, seed=42)


def test_multi_split_parts_are_equal_disjoint_and_share_one_validation_set():
    parts = [load_dataset(cfg("digits", size=8, val_fraction=0.2, num_parts=4, part=k)) for k in range(4)]
    full = load_dataset(cfg("digits", size=8, val_fraction=0.2))
    sizes = {len(p.train) for p in parts}
    assert sizes == {len(full.train) // 4}
    for p in parts[1:]:
        assert torch.equal(p.val, parts[0].val)
    rows = [{bytes(img.numpy()) for img in p.train} for p in parts]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not rows[i] & rows[j] or len(rows[i] & rows[j]) < 5  # digits has a few duplicate images
    idx = [set(select_part([str(i) for i in range(103)], 4, k, 42).tolist()) for k in range(4)]
    assert all(len(s) == 25 for s in idx) and not set.intersection(*idx) and len(set.union(*idx)) == 100


# ------------------------------------------------------------------------------------------- folders


def write_mixed_folder(root):
    """Class subfolders with PNG, JPEG, PGM, WebP in many modes, plus a non-image file."""
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.fromarray(noise(40, 30), "L").save(root / "cats" / "l.png")
    Image.fromarray(noise(30, 40, 3), "RGB").save(root / "cats" / "rgb.jpg")
    Image.fromarray(noise(30, 30, 4), "RGBA").save(root / "cats" / "rgba.png")
    Image.fromarray(noise(30, 30), "L").convert("P").save(root / "dogs" / "p.png")
    Image.fromarray(noise(32, 32, 3), "RGB").convert("CMYK").save(root / "dogs" / "cmyk.jpg")
    Image.fromarray(noise(20, 20).astype(np.uint16) * 257).save(root / "dogs" / "i16.png")
    Image.fromarray(noise(20, 24), "L").save(root / "dogs" / "gray.pgm")
    Image.fromarray(noise(24, 24, 3), "RGB").save(root / "dogs" / "w.webp")
    (root / "dogs" / "notes.txt").write_text("not an image")


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_reads_every_mode_recursively_with_class_labels(tmp_path, channels):
    write_mixed_folder(tmp_path / "pets")
    data = load_dataset(cfg("folder", tmp_path / "pets", channels=channels, val_fraction=0.0))
    assert data.name == "pets" and data.val is None
    assert data.train.shape == (8, channels, 16, 16) and data.train.dtype == torch.uint8
    assert sorted(data.labels["train"].tolist()) == [0, 0, 0, 1, 1, 1, 1, 1]
    meta = read_meta(data.cache_dir)
    assert meta["label_names"] == ["cats", "dogs"] and meta["skipped"] == []
    assert any("ignored 1 files that are not images" in n for n in meta["notes"])


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    (tmp_path / "x").mkdir()
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "x" / "mid.png")
    data = load_dataset(cfg("folder", tmp_path / "x", size=8, val_fraction=0.0))
    assert int(data.train[0, 0, 0, 0]) == 128


def test_train_and_test_folders_are_the_official_split(tmp_path):
    for split, n in (("train", 10), ("test", 4)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(noise(8, 8), "L").save(tmp_path / split / c / f"{i}.png")
    data = load_dataset(cfg("folder", tmp_path, size=8, val_fraction=0.2))
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 8)
    assert set(data.labels["test"].tolist()) == {0, 1}


def write_bad_folder(root):
    root.mkdir()
    for i in range(3):
        Image.fromarray(noise(20, 20), "L").save(root / f"good{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "truncated.jpg").write_bytes(_jpeg_bytes()[:300])
    (root / "text.jpg").write_text("this is not a jpeg")
    Image.fromarray(noise(6, 6), "L").save(root / "tiny.png")  # smaller than the crop


def _jpeg_bytes():
    buf = io.BytesIO()
    Image.fromarray(noise(64, 64, 3), "RGB").save(buf, "JPEG")
    return buf.getvalue()


def test_bad_files_are_skipped_listed_and_counted(tmp_path, caplog):
    write_bad_folder(tmp_path / "bad")
    with caplog.at_level(logging.WARNING, logger="genlab"):
        data = load_dataset(cfg("folder", tmp_path / "bad", size=8, crop=16, val_fraction=0.0))
    assert len(data.train) == 3
    for name in ("broken.png", "truncated.jpg", "text.jpg", "tiny.png"):
        assert f"skipped {name}" in caplog.text
    assert "smaller than the crop 16" in caplog.text
    assert "skipped 4 of 7 images" in caplog.text
    assert len(read_meta(data.cache_dir)["skipped"]) == 4


def test_strict_turns_a_bad_file_into_an_error(tmp_path):
    write_bad_folder(tmp_path / "bad")
    with pytest.raises(GenlabError, match=r"broken\.png: .*4 unusable images"):
        load_dataset(cfg("folder", tmp_path / "bad", size=8, crop=16, val_fraction=0.0, strict=True))


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(GenlabError, match=f"no such folder: {tmp_path / 'nope'}"):
        load_dataset(cfg("folder", tmp_path / "nope"))
    with pytest.raises(GenlabError, match="no image files"):
        load_dataset(cfg("folder", tmp_path))
    with pytest.raises(GenlabError, match="data.root is not set"):
        load_dataset(cfg("folder"))
    (tmp_path / "only-bad").mkdir()
    (tmp_path / "only-bad" / "x.png").write_bytes(b"nope")
    with pytest.raises(GenlabError, match="none of the 1 image files could be used"):
        load_dataset(cfg("folder", tmp_path / "only-bad"))


def test_ckplus48_from_shared_data(shared_data):
    data = load_dataset(cfg("folder", shared_data / "ckplus48", size=32, channels=1, val_fraction=0.1))
    assert len(data.train) + len(data.val) + len(data.test) == 981
    assert data.train.shape[1:] == (1, 32, 32) and data.train.float().std() > 20
    assert read_meta(data.cache_dir)["label_names"] == ["anger", "contempt", "disgust", "fear", "happy", "sadness",
                                                         "surprise"]


def test_att_faces_pgm_from_shared_data(shared_data):
    data = load_dataset(cfg("folder", shared_data / "att_faces", size=32, channels=1, val_fraction=0.0))
    assert data.train.shape == (400, 1, 32, 32)
    assert len(data.labels["train"].unique()) == 40


# Synthetic twins of the real layouts above, written here, so a clone without ../shared/data still
# tests every loader path; the real-data tests keep what only real files show (real JPEG decoding,
# the real counts).

EMOTIONS = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]


def test_ckplus_emotion_folders_written_here(tmp_path):
    """CK+48's layout: CK+48/<emotion>/S<subject>_<sequence>_<frame>.png, 48x48 grayscale."""
    root = tmp_path / "ckplus48"
    for e, emotion in enumerate(EMOTIONS):
        (root / "CK+48" / emotion).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(noise(48, 48), "L").save(root / "CK+48" / emotion / f"S{e:03d}_00{k}_0000001{k}.png")
    data = load_dataset(cfg("folder", root, size=32, channels=1, val_fraction=0.25))
    assert len(data.train) + len(data.val) + len(data.test) == 28 and data.train.shape[1:] == (1, 32, 32)
    assert read_meta(data.cache_dir)["label_names"] == EMOTIONS
    assert sorted((data.labels["train"].tolist() + data.labels["val"].tolist() + data.labels["test"].tolist())) == \
        sorted(list(range(7)) * 4)


def test_att_faces_pgm_subjects_written_here(tmp_path):
    """The AT&T layout: s<subject>/<n>.pgm, 92x112 grayscale PGM (P5); the largest centred square
    (92x92) is cut and resized, exactly as PIL does it."""
    root = tmp_path / "att_faces"
    faces = {}
    for subject in range(1, 5):
        (root / f"s{subject}").mkdir(parents=True)
        for n in range(1, 4):
            faces[(subject, n)] = noise(112, 92)
            Image.fromarray(faces[(subject, n)], "L").save(root / f"s{subject}" / f"{n}.pgm")
    assert (root / "s1" / "1.pgm").read_bytes()[:2] == b"P5"
    data = load_dataset(cfg("folder", root, size=32, channels=1, val_fraction=0.0))
    assert data.train.shape == (12, 1, 32, 32)
    assert read_meta(data.cache_dir)["label_names"] == ["s1", "s2", "s3", "s4"]
    keys = (data.cache_dir / "train_keys.txt").read_text().split()
    first = keys.index("s1/1.pgm")
    expected = Image.fromarray(faces[(1, 1)], "L").crop((0, 10, 92, 102)).resize((32, 32), Image.BICUBIC)
    assert np.array_equal(data.train[first, 0].numpy(), np.asarray(expected))


# ------------------------------------------------------------------------------------------- CelebA


def write_celeba(root, n=8, partition_extra=True, unlisted=False, attrs=True):
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    for i in range(1, n + 1):
        Image.fromarray(noise(218, 178, 3), "RGB").save(images / f"{i:06d}.jpg")
    rows = [f"{i:06d}.jpg {0 if i <= n - 3 else 1 if i <= n - 1 else 2}" for i in range(1, n + 1)]
    if partition_extra:
        rows += [f"{i:06d}.jpg 2" for i in range(n + 1, n + 6)]  # rows whose image is absent
    if unlisted:
        Image.fromarray(noise(218, 178, 3), "RGB").save(images / "999999.jpg")
    (root / "list_eval_partition.txt").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    (root / "identity_CelebA.txt").write_text("".join(f"{i:06d}.jpg {i % 3 + 1}\n" for i in range(1, n + 6)))
    if attrs:
        names = ["Smiling", "Male"]
        lines = [str(n + 5), " ".join(names)] + [f"{i:06d}.jpg {1 if i % 2 else -1} {-1}" for i in range(1, n + 6)]
        (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")


def test_celeba_official_layout_written_here(tmp_path, caplog):
    write_celeba(tmp_path / "celeba")
    with caplog.at_level(logging.INFO, logger="genlab"):
        data = load_dataset(cfg("celeba", tmp_path / "celeba", size=16, channels=3))
    assert data.train.shape == (5, 3, 16, 16) and len(data.val) == 2 and len(data.test) == 1
    assert "5 of 13 rows of list_eval_partition.txt have no image" in caplog.text
    assert data.labels["train"].tolist() == [2, 3, 1, 2, 3]  # identities
    assert np.load(data.cache_dir / "train_attributes.npy").tolist()[:2] == [[1, 0], [0, 0]]
    assert read_meta(data.cache_dir)["key"]["crop"] == 148


def test_celeba_without_optional_files_and_from_the_image_folder(tmp_path):
    write_celeba(tmp_path / "c", attrs=False)
    (tmp_path / "c" / "identity_CelebA.txt").unlink()
    data = load_dataset(cfg("celeba", tmp_path / "c" / "img_align_celeba", size=16))
    assert len(data.train) == 5 and data.labels == {}


def test_celeba_image_missing_from_the_partition_file(tmp_path):
    write_celeba(tmp_path / "c", unlisted=True)
    data = load_dataset(cfg("celeba", tmp_path / "c", size=16))
    assert len(data.train) + len(data.val) + len(data.test) == 8
    assert any("1 images are not in list_eval_partition.txt" in n for n in read_meta(data.cache_dir)["notes"])
    with pytest.raises(GenlabError, match="999999.jpg: not in list_eval_partition.txt"):
        load_dataset(cfg("celeba", tmp_path / "c", size=16, strict=True))


def test_celeba_without_partition_file(tmp_path):
    write_celeba(tmp_path / "c")
    (tmp_path / "c" / "list_eval_partition.txt").unlink()
    with pytest.raises(GenlabError, match="list_eval_partition.txt is missing"):
        load_dataset(cfg("celeba", tmp_path / "c", split="official"))
    data = load_dataset(cfg("celeba", tmp_path / "c", size=16, val_fraction=0.25))
    assert len(data.train) + (0 if data.val is None else len(data.val)) + (0 if data.test is None else len(data.test)) == 8


def test_celeba_from_shared_data(shared_data):
    c = cfg("celeba", shared_data / "celeba", size=64, channels=3)
    catalog = list_catalog(c)
    splits = assign_splits(catalog, c)
    # no official test images here: half of the 4,535 validation images become the report split
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (20000, 2267, 2268)
    assert len(set(catalog.labels)) > 1000  # identity_CelebA.txt read
    data = load_dataset(cfg("celeba", shared_data / "celeba", size=64, channels=3, limit=24, val_fraction=0.0))
    assert data.train.shape == (24, 3, 64, 64) and data.train.float().std() > 30
    # The first 24 images are all official "train": without an official val among them, a share of
    # train is held out as validation, as for sets without one.
    held = load_dataset(cfg("celeba", shared_data / "celeba", size=64, channels=3, limit=24, val_fraction=0.25))
    assert (len(held.train), len(held.val), len(held.test)) == (18, 3, 3)  # and half of that validation reports


# ------------------------------------------------------------------------------------------- CIFAR-10


def write_cifar_batches(root, per_batch=10):
    """The exact format of cifar-10-python.tar.gz: pickled dicts with bytes keys."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = noise(per_batch, 3072)
        d = {b"batch_label": name.encode(), b"labels": [int(x) for x in RNG.integers(0, 10, per_batch)],
             b"data": data, b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
        batches[name] = d
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                           "frog", "horse", "ship", "truck"]]}, f)
    return batches


def test_cifar10_python_batches_with_seed003_split(tmp_path):
    batches = write_cifar_batches(tmp_path)
    data = load_dataset(cfg("cifar10", tmp_path, size=32, channels=3, val_fraction=0.2))
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 10)  # 40k/10k/10k, scaled down
    # Pixels are the pickled rows in CHW order, untouched at 32x32.
    keys = (data.cache_dir / "test_keys.txt").read_text().split()
    assert keys[0] == "test_batch/00000"
    assert np.array_equal(data.test[0].numpy(), batches["test_batch"][b"data"][0].reshape(3, 32, 32))
    assert data.labels["test"].tolist() == batches["test_batch"][b"labels"]
    assert read_meta(data.cache_dir)["label_names"][0] == "airplane"


def test_cifar10_missing_batch(tmp_path):
    write_cifar_batches(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(GenlabError, match="data_batch_3 is missing"):
        load_dataset(cfg("cifar10", tmp_path))
    with pytest.raises(GenlabError, match="neither cifar-10-batches-py"):
        load_dataset(cfg("cifar10", tmp_path / "cifar-10-batches-py" / ".."  / ".." ))


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_cifar10_class_folders_written_here(tmp_path):
    """The class-folder layout of ../shared/data/cifar10-jpeg: train/<class>/*.jpg, test/<class>/*.jpg,
    the official test split kept, validation carved from the official train split (seed 003's way)."""
    for split, count in (("train", 5), ("test", 2)):
        for c in CIFAR_CLASSES:
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(noise(32, 32, 3), "RGB").save(tmp_path / split / c / f"{i:04d}.jpg", quality=75)
    c = cfg("cifar10", tmp_path, size=32, channels=3, val_fraction=0.2)
    data = load_dataset(c)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 20)
    assert read_meta(data.cache_dir)["label_names"] == CIFAR_CLASSES
    keys = (data.cache_dir / "test_keys.txt").read_text().split()
    assert all(k.startswith("test/") for k in keys)
    assert [CIFAR_CLASSES[y] for y in data.labels["test"].tolist()] == [k.split("/")[1] for k in keys]


def test_cifar10_class_folders_from_shared_data(shared_data):
    c = cfg("cifar10", shared_data / "cifar10-jpeg", size=32, channels=3, val_fraction=0.2)
    catalog = list_catalog(c)
    splits = assign_splits(catalog, c)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (40000, 10000, 10000)
    assert catalog.label_names[0] == "airplane" and len(set(catalog.labels)) == 10
    image = cache_module.preprocess(catalog.decode(int(splits["test"][0])), c)
    assert image.shape == (3, 32, 32)


# ------------------------------------------------------------------------------------------- cache


def test_cache_is_hit_the_second_time(tmp_path, monkeypatch):
    write_mixed_folder(tmp_path / "p")
    first = load_dataset(cfg("folder", tmp_path / "p", val_fraction=0.0))
    monkeypatch.setattr(cache_module, "decode_all", lambda *a: pytest.fail("decoded again despite the cache"))
    second = load_dataset(cfg("folder", tmp_path / "p", val_fraction=0.0))
    assert torch.equal(first.train, second.train) and first.cache_dir == second.cache_dir


@pytest.mark.parametrize("change", [{"size": 8}, {"crop": 20}, {"resize_filter": "lanczos"}, {"channels": 3},
                                    {"split_seed": 1}, {"val_fraction": 0.3}, {"split": "random"}, {"limit": 4}])
def test_cache_key_changes_with_every_option(tmp_path, change):
    write_mixed_folder(tmp_path / "p")
    base = dict(val_fraction=0.0)
    a = list_catalog(cfg("folder", tmp_path / "p", **base))
    changed = cfg("folder", tmp_path / "p", **(base | change))
    assert cache_path(cfg("folder", tmp_path / "p", **base), a) != cache_path(changed, list_catalog(changed))


def test_cache_misses_when_the_folder_changes(tmp_path):
    write_mixed_folder(tmp_path / "p")
    a = prepare(cfg("folder", tmp_path / "p"))
    Image.fromarray(noise(20, 20), "L").save(tmp_path / "p" / "cats" / "new.png")
    b = prepare(cfg("folder", tmp_path / "p"))
    assert a != b and read_meta(b)["counts"]["train"] + read_meta(b)["counts"]["val"] == 9


def test_cache_of_another_format_is_rebuilt_or_refused(tmp_path, caplog):
    write_mixed_folder(tmp_path / "p")
    path = prepare(cfg("folder", tmp_path / "p"))
    meta = read_meta(path)
    (path / "meta.json").write_text(__import__("json").dumps(meta | {"format": 0}))
    with pytest.raises(GenlabError, match="of format 0|in format 0"):
        prepare(cfg("folder", tmp_path / "p", strict=True))
    with caplog.at_level(logging.WARNING, logger="genlab"):
        assert prepare(cfg("folder", tmp_path / "p")) == path
    assert "of another format" in caplog.text and read_meta(path)["format"] == cache_module.CACHE_FORMAT


def test_a_failed_write_leaves_no_cache_behind(tmp_path, monkeypatch):
    write_mixed_folder(tmp_path / "p")
    c = cfg("folder", tmp_path / "p", cache_dir=str(tmp_path / "cache"))

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.np, "save", full_disk)
    with pytest.raises(GenlabError, match="could not write data cache .*No space left on device"):
        prepare(c)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]  # only the (empty) lock file


def test_training_reads_the_cache_memory_mapped(tmp_path):
    write_mixed_folder(tmp_path / "p")
    data = load_dataset(cfg("folder", tmp_path / "p", val_fraction=0.0))
    mapped = cache_module._load_array(data.cache_dir / "train.npy")
    assert isinstance(mapped, np.memmap) and np.array_equal(np.asarray(mapped), data.train.numpy())


# ------------------------------------------------------------------------------------------- augmentation


def test_augmentations_keep_shape_and_range_and_are_seeded():
    from genlab.data.augment import BatchAugment, random_hflip, random_rotate

    x = torch.rand(6, 3, 16, 16) * 2 - 1
    assert torch.equal(random_hflip(x, p=1.0), x.flip(3))
    assert torch.equal(random_hflip(x, p=0.0), x)
    torch.testing.assert_close(random_rotate(x, 0.0), x, atol=1e-5, rtol=0)
    aug = BatchAugment(AugmentConfig(hflip=True, rotate=10, blur_sigma=1.0, color_jitter=0.2))
    assert aug.active and not BatchAugment(AugmentConfig()).active
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, x)


def test_blur_smooths_and_keeps_the_mean():
    from genlab.data.augment import random_gaussian_blur

    x = torch.rand(4, 1, 32, 32) * 2 - 1
    y = random_gaussian_blur(x, max_sigma=2.0, p=1.0, min_sigma=2.0)
    assert y.std() < x.std() * 0.5
    torch.testing.assert_close(y.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=0.05, rtol=0)


def test_diffaugment_is_differentiable_and_does_what_it_says():
    from genlab.data.augment import _diff_cutout, _diff_translation, diff_augment, parse_policy

    x = (torch.rand(8, 3, 16, 16) + 0.5).requires_grad_()  # strictly positive, so zeros mean "cut"
    y = diff_augment(x, parse_policy("color,translation,cutout"))
    y.sum().backward()
    assert y.shape == x.shape and x.grad is not None and x.grad.abs().sum() > 0
    cut = _diff_cutout(x.detach())
    assert ((cut == 0).all(1).flatten(1).sum(1) > 0).all()  # each image lost a square
    # Translation: every image is the input shifted by an integer offset of at most 1/8 of the side
    # (2 px here), zero where it moved in from outside; offsets differ between images.
    torch.manual_seed(0)
    unique = (torch.arange(16 * 16, dtype=torch.float32) + 1).view(1, 1, 16, 16).repeat(32, 1, 1, 1)
    moved = _diff_translation(unique)
    offsets = set()
    for image in moved[:, 0]:
        (y, x_), = (image == unique[0, 0, 8, 8]).nonzero().tolist()  # where the centre pixel went
        dy, dx = y - 8, x_ - 8
        assert abs(dy) <= 2 and abs(dx) <= 2
        expected = torch.zeros(16, 16)
        expected[max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)] = \
            unique[0, 0, max(-dy, 0):16 + min(-dy, 0), max(-dx, 0):16 + min(-dx, 0)]
        assert torch.equal(image, expected)
        offsets.add((dy, dx))
    assert len(offsets) > 5
    with pytest.raises(GenlabError, match="unknown policy 'rotate'"):
        parse_policy("color,rotate")


# ------------------------------------------------------------------------------------------- download


def test_download_constants_match_torchvision():
    from torchvision.datasets import CIFAR10, CelebA

    from genlab.data import download

    assert dict(CIFAR10.train_list + CIFAR10.test_list) | {CIFAR10.meta["filename"]: CIFAR10.meta["md5"]} == \
        download.CIFAR10_FILES
    assert (CIFAR10.url, CIFAR10.filename, CIFAR10.tgz_md5) == (download.CIFAR10_URL, *download.CIFAR10_ARCHIVE)
    assert set(download.CELEBA_FILES) <= set(CelebA.file_list)


def test_download_offline_names_the_files_and_where(tmp_path, monkeypatch):
    from genlab.data import download

    monkeypatch.setattr(download, "_reachable", lambda url: "www.cs.toronto.edu is not reachable (no network)")
    with pytest.raises(GenlabError) as e:
        download.download_cifar10(tmp_path)
    msg = str(e.value)
    assert "cifar-10-python.tar.gz" in msg and "c58f30108f718f92721af3b95e74349a" in msg and str(tmp_path) in msg
    monkeypatch.setattr(download, "_reachable", lambda url: "drive.google.com is not reachable")
    with pytest.raises(GenlabError, match="img_align_celeba.zip .md5 00d2c5bc6d35e252742224ab0c1e8fcb"):
        download.download_celeba(tmp_path)


def test_download_verifies_checksums_of_what_arrives(tmp_path, monkeypatch):
    """The real download path, fed a test-written archive instead of the network."""
    import torchvision.datasets.utils as tv_utils

    from genlab.data import download

    write_cifar_batches(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = lambda p: hashlib.md5(p.read_bytes()).hexdigest()  # noqa: E731
    files = {p.name: md5(p) for p in (tmp_path / "src" / "cifar-10-batches-py").iterdir()}

    def fake_download_url(url, root, filename=None, md5=None, **kw):
        (tmp_path / "dl").mkdir(exist_ok=True)
        (tmp_path / "dl" / filename).write_bytes(archive.read_bytes())

    monkeypatch.setattr(download, "_reachable", lambda url: None)
    monkeypatch.setattr(tv_utils, "download_url", fake_download_url)
    # The official checksum does not match a test-written archive: the download is refused.
    with pytest.raises(GenlabError, match="checksum mismatch for .*cifar-10-python.tar.gz"):
        download.download_cifar10(tmp_path / "dl")
    monkeypatch.setattr(download, "CIFAR10_ARCHIVE", ("cifar-10-python.tar.gz", md5(archive)))
    monkeypatch.setattr(download, "CIFAR10_FILES", files)
    target = download.download_cifar10(tmp_path / "dl")
    data = load_dataset(cfg("cifar10", target.parent, size=32, channels=3, val_fraction=0.0))
    assert len(data.train) == 50 and len(data.test) == 10
    # A damaged batch fails its checksum; the verified archive is extracted again and repairs it.
    (target / "data_batch_2").write_bytes(b"damaged")
    download.download_cifar10(tmp_path / "dl")
    assert md5(target / "data_batch_2") == files["data_batch_2"]
    # A file that still does not match after extraction is an error naming it.
    monkeypatch.setattr(download, "CIFAR10_FILES", files | {"data_batch_2": "0" * 32})
    with pytest.raises(GenlabError, match="checksum mismatch after download for data_batch_2"):
        download.download_cifar10(tmp_path / "dl")


def test_celeba_download_path_with_test_written_files(tmp_path, monkeypatch):
    """The real CelebA download code (Google Drive helper, MD5 checks, unzip), fed files written here."""
    import zipfile

    import torchvision.datasets.utils as tv_utils

    from genlab.data import download

    src = tmp_path / "src"
    write_celeba(src, n=6, partition_extra=False)
    with zipfile.ZipFile(tmp_path / "img_align_celeba.zip", "w") as z:
        for p in sorted((src / "img_align_celeba").iterdir()):
            z.write(p, f"img_align_celeba/{p.name}")
    payloads = {"img_align_celeba.zip": (tmp_path / "img_align_celeba.zip").read_bytes()}
    for name in ("list_eval_partition.txt", "identity_CelebA.txt", "list_attr_celeba.txt"):
        payloads[name] = (src / name).read_bytes()
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in payloads.items()}
    fetched = []

    def fake_drive(file_id, root, filename, md5sum=None):
        fetched.append(filename)
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / filename).write_bytes(payloads[filename])

    monkeypatch.setattr(download, "_reachable", lambda url: None)
    monkeypatch.setattr(tv_utils, "download_file_from_google_drive", fake_drive)
    monkeypatch.setattr(download, "CELEBA_FILES", [(f"id-{n}", md5[n], n) for n in payloads])
    target = download.download_celeba(tmp_path / "data")
    assert sorted(fetched) == sorted(payloads)
    data = load_dataset(cfg("celeba", target, size=16, channels=3))
    assert len(data.train) + len(data.val) + len(data.test) == 6
    fetched.clear()
    assert download.download_celeba(tmp_path / "data") == target and fetched == []  # verified, nothing fetched
    monkeypatch.setattr(download, "CELEBA_FILES", [("id", "0" * 32, "list_eval_partition.txt")])
    with pytest.raises(GenlabError, match="checksum mismatch for .*list_eval_partition.txt"):
        download.download_celeba(tmp_path / "data")
