"""Per-image noise: one ``torch.Generator`` per image, seeded ``seed + i``.

Everything random in sampling is drawn through here, row by row from each image's own generator,
so image i depends on seed + i alone: never on the batch size, on how many images are asked for,
or on the device (draws happen on the CPU and are moved once). The cost is one small draw per
image per call, which is negligible next to a network's forward pass.
"""

from __future__ import annotations

import torch


class SeededNoise:
    def __init__(self, seeds, device: torch.device | str = "cpu"):
        self.seeds = list(seeds)
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def _rows(self, draw, shape: tuple[int, ...]) -> torch.Tensor:
        out = torch.empty(len(self), *shape)
        for row, generator in zip(out, self.generators):
            row.copy_(draw(shape, generator=generator))
        return out.to(self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal, (N, *shape): row i from image i's generator."""
        return self._rows(torch.randn, tuple(shape))

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform on [0, 1), (N, *shape): row i from image i's generator."""
        return self._rows(torch.rand, tuple(shape))
