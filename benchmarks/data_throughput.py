"""Images per second delivered to the training step: genlab's prepared cache against the plain
torchvision route, in one run on one machine.

- genlab: ``genlab data prepare`` once (timed, into a fresh cache), then every batch is gathered
  from the uint8 cache (memory-mapped; moved to the GPU whole when training there) and converted to
  [-1, 1] on the device; also with seed 000's augmentation run on the batch.
- torchvision: ``ImageFolder`` over the JPEGs and a ``DataLoader`` with workers that decode,
  centre-crop and resize every image in every epoch (the PyTorch DCGAN example's route), the same
  crop, size and filter, batches moved to the device.

    python benchmarks/data_throughput.py --root ../shared/data/celeba --out benchmarks/results/data_throughput-cpu.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import write_result


def genlab_route(cfg, device: torch.device, batch: int, epochs: int, augment: bool) -> dict:
    from genlab.config import AugmentConfig
    from genlab.data import load_dataset, to_model_range
    from genlab.data.augment import BatchAugment

    data = load_dataset(cfg)
    images = data.train.to(device) if device.type == "cuda" else data.train  # as the training loop places it
    aug = BatchAugment(AugmentConfig(hflip=True, rotate=10, blur_sigma=1.0, color_jitter=0.1)) if augment else None
    n = len(images) // batch * batch
    delivered, checksum = 0, torch.zeros((), device=device)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(images), device=images.device)
        for i in range(0, n, batch):
            x = to_model_range(images[order[i : i + batch]].to(device, non_blocking=True))
            if aug is not None:
                x = aug(x)
            checksum += x[0, 0, 0, 0]  # consume the batch without a host sync per step
            delivered += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images": delivered, "seconds": round(seconds, 3), "images_per_s": round(delivered / seconds, 1),
            "epochs": epochs, "batch_size": batch, "augmentation": "hflip, rotate 10, blur, color jitter" if augment else None}


def torchvision_route(root: Path, cfg, device: torch.device, batch: int, workers: int, max_images: int) -> dict:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms
    from torchvision.transforms import InterpolationMode

    transform = transforms.Compose([
        transforms.CenterCrop(cfg.crop),
        transforms.Resize(cfg.size, interpolation=InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize((0.5,) * 3, (0.5,) * 3),
    ])
    dataset = datasets.ImageFolder(str(root), transform=transform)  # one class: img_align_celeba
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    delivered, checksum = 0, torch.zeros((), device=device)
    it = iter(loader)
    x, _ = next(it)  # the workers' start-up is not counted
    start = time.perf_counter()
    for x, _ in it:
        x = x.to(device, non_blocking=True)
        checksum += x[0, 0, 0, 0]
        delivered += len(x)
        if delivered >= max_images:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images": delivered, "seconds": round(seconds, 3), "images_per_s": round(delivered / seconds, 1),
            "batch_size": batch, "num_workers": workers, "dataset_images": len(dataset)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="CelebA folder with img_align_celeba/")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5, help="epochs over the cache for genlab's route")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for torchvision's route")
    parser.add_argument("--max-images", type=int, default=6400, help="images drawn through torchvision's route")
    args = parser.parse_args()
    device = torch.device(args.device)

    from genlab.config import DataConfig

    with tempfile.TemporaryDirectory() as cache:
        cfg = DataConfig(source="celeba", root=str(args.root), size=64, channels=3, crop=148,
                         resize_filter="bicubic", cache_dir=cache)
        from genlab.data import prepare

        start = time.perf_counter()
        prepare(cfg)
        first_prepare = time.perf_counter() - start
        plain = genlab_route(cfg, device, args.batch, args.epochs, augment=False)
        augmented = genlab_route(cfg, device, args.batch, max(1, args.epochs // 2), augment=True)
    classic = torchvision_route(args.root, cfg, device, args.batch, args.workers, args.max_images)
    result = {
        "benchmark": "data_throughput",
        "what": "images per second delivered to the training step, CelebA 64x64 (centre crop 148, bicubic)",
        "first_prepare_seconds": round(first_prepare, 2),
        "genlab_cache": plain,
        "genlab_cache_augmented": augmented,
        "torchvision_imagefolder": classic,
        "speedup_vs_torchvision": round(plain["images_per_s"] / classic["images_per_s"], 1),
        "speedup_vs_torchvision_augmented": round(augmented["images_per_s"] / classic["images_per_s"], 1),
    }
    write_result(args.out, result, device)
    print(f"first prepare {first_prepare:.1f} s; genlab {plain['images_per_s']:.0f} img/s "
          f"({augmented['images_per_s']:.0f} with augmentation); torchvision {classic['images_per_s']:.0f} img/s; "
          f"speed-up {result['speedup_vs_torchvision']}x ({result['speedup_vs_torchvision_augmented']}x augmented)")


if __name__ == "__main__":
    main()
