"""RealNVP (Dinh et al. 2017): affine coupling layers in the paper's multi-scale architecture.

Every layer maps x -> (y, log|det dy/dx|) and has an exact inverse. At each scale: three couplings
with alternating checkerboard masks, a squeeze (2x2 pixels -> 4 channels), three couplings with
alternating channel-wise masks, then half the channels are factored out (they are final latents)
and the rest go on to the next scale; the last scale has four checkerboard couplings (section 3.6).
The factored-out parts are put back in place, so the latent has the image's shape.

What makes it train where seed 003's flow did not (see the README's RealNVP section):
- the log-scale of every coupling is bounded, s = scale * tanh(s_raw) with a learned per-channel
  scale (the paper's tanh stabilisation); an unbounded exp(s) from a ReLU network overflows;
- the last convolution of every s/t network starts at zero, so every coupling starts as the
  identity and the initial loss is that of the pre-processing alone;
- every log-determinant is counted: couplings, activation normalisation, and the logit
  pre-processing of the data (section 4.1), computed in the method;
- s and t come from one residual network with normalisation, not two plain ReLU stacks.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (4C, H/2, W/2): each 2x2 block of pixels becomes four channels (section 3.6)."""
    n, c, h, w = x.shape
    x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // 4, h * 2, w * 2)


def checkerboard(h: int, w: int, flip: bool, device) -> torch.Tensor:
    mask = (torch.arange(h, device=device)[:, None] + torch.arange(w, device=device)[None]) % 2
    return (1 - mask if flip else mask).float().view(1, 1, h, w)


class ActNorm(nn.Module):
    """Per-channel affine y = (x + b) * exp(log_s), initialised from the first batch so its outputs
    have zero mean and unit variance (Kingma & Dhariwal 2018, section 3.1); log|det| = H W sum log_s."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialised", torch.tensor(False))
        self._checked = False  # the buffer is read once per module, not every step (a device sync on a GPU)

    @torch.no_grad()
    def _initialise(self, x):
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-(std + 1e-6).log())
        self.initialised.fill_(True)

    def forward(self, x):
        if self.training and not self._checked:
            if not bool(self.initialised):
                self._initialise(x)
            self._checked = True
        y = (x + self.bias) * self.log_scale.exp()
        return y, self.log_scale.sum() * x.shape[2] * x.shape[3] * torch.ones(x.shape[0], device=x.device)

    def inverse(self, y):
        return y * (-self.log_scale).exp() - self.bias


class ResNetST(nn.Module):
    """The s and t network of a coupling: a residual network (He et al. 2016) of ``blocks`` blocks
    of ``width`` channels with batch normalisation, as the paper uses, outputting 2 C_out channels
    (log-scale and translation) from a zero-initialised last convolution."""

    def __init__(self, c_in: int, c_out: int, width: int, blocks: int):
        super().__init__()
        self.inp = nn.Conv2d(c_in, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False),
                          nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
            for _ in range(blocks))
        self.out = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 2 * c_out, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class Coupling(nn.Module):
    """Affine coupling (section 3.3-3.4): y_a = x_a, y_b = x_b * exp(s(x_a)) + t(x_a), with a
    checkerboard mask (``mask="checker"``) or the channel halves (``mask="channel"``);
    log|det| = sum s over the transformed part. s = scale * tanh(s_raw) keeps it bounded."""

    def __init__(self, channels: int, mask: str, flip: bool, width: int, blocks: int):
        super().__init__()
        self.mask, self.flip = mask, flip
        c_in = channels + 1 if mask == "checker" else channels // 2  # the checkerboard mask is an input too
        c_out = channels if mask == "checker" else channels // 2
        self.st = ResNetST(c_in, c_out, width, blocks)
        self.scale = nn.Parameter(torch.ones(1, c_out, 1, 1))
        self.norm = ActNorm(channels)

    def _st(self, x_a, extra=None):
        h = self.st(x_a if extra is None else torch.cat([x_a, extra], 1))
        s_raw, t = h.chunk(2, dim=1)
        return self.scale * torch.tanh(s_raw), t

    def forward(self, x):
        if self.mask == "checker":
            b = checkerboard(x.shape[2], x.shape[3], self.flip, x.device)
            s, t = self._st(x * b, b.expand(x.shape[0], 1, -1, -1))
            s, t = s * (1 - b), t * (1 - b)  # only the unmasked pixels change
            y = x * s.exp() + t
            logdet = s.flatten(1).sum(1)
        else:
            x_a, x_b = x.chunk(2, dim=1)
            if self.flip:
                x_a, x_b = x_b, x_a
            s, t = self._st(x_a)
            y_b = x_b * s.exp() + t
            y = torch.cat([y_b, x_a] if self.flip else [x_a, y_b], dim=1)
            logdet = s.flatten(1).sum(1)
        y, norm_logdet = self.norm(y)
        return y, logdet + norm_logdet

    def inverse(self, y):
        y = self.norm.inverse(y)
        if self.mask == "checker":
            b = checkerboard(y.shape[2], y.shape[3], self.flip, y.device)
            s, t = self._st(y * b, b.expand(y.shape[0], 1, -1, -1))
            s, t = s * (1 - b), t * (1 - b)
            return (y - t) * (-s).exp()
        y_a, y_b = y.chunk(2, dim=1)
        if self.flip:
            y_a, y_b = y_b, y_a
        s, t = self._st(y_a)
        x_b = (y_b - t) * (-s).exp()
        return torch.cat([x_b, y_a] if self.flip else [y_a, x_b], dim=1)


class Scale(nn.Module):
    """One scale of the multi-scale architecture, holding the next scale inside it."""

    def __init__(self, channels: int, scales_left: int, width: int, blocks: int):
        super().__init__()
        self.last = scales_left == 1
        n_checker = 4 if self.last else 3
        self.checker = nn.ModuleList(Coupling(channels, "checker", i % 2 == 1, width, blocks) for i in range(n_checker))
        if not self.last:
            self.channel = nn.ModuleList(Coupling(4 * channels, "channel", i % 2 == 1, 2 * width, blocks) for i in range(3))
            self.next = Scale(2 * channels, scales_left - 1, 2 * width, blocks)

    def forward(self, x):
        logdet = torch.zeros(x.shape[0], device=x.device)
        for layer in self.checker:
            x, ld = layer(x)
            logdet = logdet + ld
        if self.last:
            return x, logdet
        x = squeeze(x)
        for layer in self.channel:
            x, ld = layer(x)
            logdet = logdet + ld
        z, rest = x.chunk(2, dim=1)  # half the dimensions are factored out here (section 3.6)
        rest, ld = self.next(rest)
        return unsqueeze(torch.cat([z, rest], dim=1)), logdet + ld

    def inverse(self, y):
        if not self.last:
            z, rest = squeeze(y).chunk(2, dim=1)
            x = torch.cat([z, self.next.inverse(rest)], dim=1)
            for layer in reversed(self.channel):
                x = layer.inverse(x)
            y = unsqueeze(x)
        for layer in reversed(self.checker):
            y = layer.inverse(y)
        return y


class RealNVP(nn.Module):
    """The flow from (pre-processed) images to latents of the same shape; ``scales`` scales, each
    halving the side, so the image side must be divisible by 2^(scales - 1)."""

    def __init__(self, channels: int, scales: int = 2, width: int = 64, blocks: int = 4):
        super().__init__()
        self.body = Scale(channels, scales, width, blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.body(x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.body.inverse(z)


def logit_preprocess(x01: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y = logit(alpha + (1 - 2 alpha) x) for x in [0, 1] (Dinh et al. 2017, section 4.1), and its
    log|det dy/dx| per image: sum log(1 - 2 alpha) - log p - log(1 - p) with p = alpha + (1 - 2 alpha) x."""
    p = alpha + (1 - 2 * alpha) * x01
    y = p.log() - (1 - p).log()
    logdet = (torch.log1p(torch.tensor(-2 * alpha, device=x01.device)) - p.log() - (1 - p).log()).flatten(1).sum(1)
    return y, logdet


def logit_postprocess(y: torch.Tensor, alpha: float) -> torch.Tensor:
    """The inverse of logit_preprocess: x = (sigmoid(y) - alpha) / (1 - 2 alpha)."""
    return (torch.sigmoid(y) - alpha) / (1 - 2 * alpha)
