import logging

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.config import DataConfig
from genlab.data import build_dataset, to_model_range, to_uint8
from genlab.data.sources import split_indices
from genlab.errors import GenlabError


def test_range_conversion_round_trips_every_level():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = to_model_range(levels)
    assert x.min() == -1 and x.max() == 1 and x.dtype == torch.float32
    assert torch.equal(to_uint8(x), levels)
    assert torch.equal(to_uint8(torch.tensor([-5.0, 5.0])), torch.tensor([0, 255], dtype=torch.uint8))


@pytest.mark.parametrize("channels", [1, 3])
def test_digits_is_embedded_and_scaled(channels):
    data = build_dataset(DataConfig(source="digits", size=32, channels=channels, val_fraction=0.1))
    assert data.name == "digits"
    assert data.train.dtype == torch.uint8 and data.train.shape[1:] == (channels, 32, 32)
    assert len(data.train) + len(data.val) == 1797 and len(data.val) == 180
    assert data.train.max() == 255 and data.train.min() == 0


def test_split_is_disjoint_reproducible_and_seeded():
    a_train, a_val = split_indices(100, 0.2, seed=42)
    b_train, b_val = split_indices(100, 0.2, seed=42)
    assert torch.equal(a_train, b_train) and torch.equal(a_val, b_val)
    assert len(a_val) == 20 and len(a_train) == 80
    assert not set(a_train.tolist()) & set(a_val.tolist())
    assert set(a_train.tolist()) | set(a_val.tolist()) == set(range(100))
    assert not torch.equal(a_val, split_indices(100, 0.2, seed=1)[1])


def write_images(root, n=6):
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8), "L").save(root / "a" / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), "RGB").save(root / "b" / f"{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA").save(root / "b" / "rgba.webp")


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_reads_mixed_modes_recursively(tmp_path, channels):
    write_images(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    data = build_dataset(DataConfig(source="folder", root=str(tmp_path), size=16, channels=channels, val_fraction=0.0))
    assert data.val is None
    assert data.train.shape == (13, channels, 16, 16) and data.train.dtype == torch.uint8


def test_folder_skips_corrupt_files_and_counts_them(tmp_path, caplog):
    write_images(tmp_path, n=3)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = tmp_path / "a" / "0.png"
    (tmp_path / "a" / "truncated.png").write_bytes(good.read_bytes()[:60])
    with caplog.at_level(logging.WARNING, logger="genlab"):
        data = build_dataset(DataConfig(source="folder", root=str(tmp_path), size=8, val_fraction=0.0))
    assert len(data.train) == 7
    assert "skipped 2 of 9 files" in caplog.text and "broken.png" in caplog.text


def test_folder_crop_must_fit(tmp_path, caplog):
    write_images(tmp_path, n=1)
    with pytest.raises(GenlabError, match="none of the 3 image files"):
        build_dataset(DataConfig(source="folder", root=str(tmp_path), size=8, crop=100, val_fraction=0.0))


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(GenlabError, match=f"no such folder: {tmp_path / 'nope'}"):
        build_dataset(DataConfig(source="folder", root=str(tmp_path / "nope")))
    with pytest.raises(GenlabError, match="no image files"):
        build_dataset(DataConfig(source="folder", root=str(tmp_path)))
    with pytest.raises(GenlabError, match="data.root is not set"):
        build_dataset(DataConfig(source="folder"))


def test_ckplus48_from_shared_data(shared_data):
    root = shared_data / "ckplus48"
    data = build_dataset(DataConfig(source="folder", root=str(root), size=32, channels=1, val_fraction=0.1))
    assert len(data.train) + len(data.val) == 981
    assert data.train.shape[1:] == (1, 32, 32)
    assert data.train.float().std() > 20  # real faces, not a constant


def test_celeba_jpegs_as_a_folder(shared_data):
    root = shared_data / "celeba" / "img_align_celeba"
    data = build_dataset(DataConfig(source="folder", root=str(root), size=64, channels=3, crop=148,
                                    limit=20, val_fraction=0.0))
    assert data.train.shape == (20, 3, 64, 64)
