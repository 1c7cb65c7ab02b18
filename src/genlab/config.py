"""Typed configuration: dataclasses with every default in one place, YAML presets, dotted overrides.

This module is the schema and the parser; it knows no registry. :mod:`genlab.resolve` turns a
preset plus ``key=value`` overrides into a validated :class:`Config`:

1. a preset (a YAML file shipped in ``genlab/presets`` or a path given by the user) is read;
2. ``key=value`` overrides with dotted keys (``model.latent_dim=64``) are applied to it;
3. the nested dict is turned into the dataclasses below. The ``model`` section's class is owned by
   the method (``method: vae`` -> ``VAEConfig``) and the ``sampler`` section's by the sampler, so
   each family and each sampler declares its own options.

Any key that is not a field is an error naming the key and the nearest valid keys; any value of
the wrong type is an error naming the key and the expected type. Nothing is swallowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from genlab.errors import GenlabError

# -- the evaluation protocol's defaults: the CLI (`genlab eval`), the config (`eval.*` during
# training) and the Python API (EvalSettings) all read these; which metric applies to which
# family is in genlab.metrics.table

PROTOCOL_N = 50_000  # the sample count of the standard FID protocol (Heusel et al. 2017)
TRAINING_N = 10_000  # samples per evaluation during training: cheaper, comparable only with itself
DEFAULT_EXTRACTOR = "inception-v3-compat"
SAMPLE_METRICS = ("fid", "kid", "is", "pr", "swd", "msssim", "nn")  # need only samples (as table.py says; tested)


@dataclass
class EvalSettings:
    """Every setting of the evaluation protocol, with its default (the CLI's defaults are these)."""

    metrics: list[str] = field(default_factory=lambda: list(SAMPLE_METRICS))
    n: int = PROTOCOL_N  # generated images for the sample-based metrics
    split: str | None = None  # the real split scored: report (the default: test, else val), choice (val, else train), or a name
    extractor: str = DEFAULT_EXTRACTOR  # feature extractor of fid/kid/is/pr
    inception_weights: str | None = None  # a local copy of the Inception weights (offline machines)
    batch_size: int = 256  # images generated and featurised at once
    seed: int = 0  # first sample seed; image i uses seed + i
    swd_images: int = 4096  # at most this many images per side for SWD
    pairs: int = 2000  # random pairs for the MS-SSIM diversity score
    nn_samples: int = 1000  # samples checked against the training set for memorisation
    ppl_similarity: str = "lpips-vgg16"  # the image distance of PPL
    likelihood_calibration: int = 2048  # training images a family may fit its likelihood on (VAE decoder scale)

# train.precision and train.compile_mode (genlab.train.speed acts on them)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class AugmentConfig:
    """Augmentations of real training batches, run on whole batches on the training device (seed 000's set)."""

    hflip: bool = False  # mirror a random half of the images left-right
    rotate: float = 0.0  # random rotation, uniform in [-rotate, +rotate] degrees (seed 000: 10)
    blur_sigma: float = 0.0  # Gaussian blur with sigma uniform in [0.1, blur_sigma] pixels; 0 = off
    blur_p: float = 0.5  # share of images blurred when blur_sigma > 0
    color_jitter: float = 0.0  # brightness, contrast and saturation each scaled by U(1 - j, 1 + j); 0 = off


@dataclass
class DataConfig:
    source: str = "digits"  # digits (embedded, never downloaded) | folder | celeba | cifar10
    root: str | None = None  # where the source's files are (its own layout; see the README)
    size: int | None = None  # side of the square images the model sees, in pixels; null = the source's
    #                          default (digits 32, cifar10 32, celeba 64, folder 64)
    channels: int | None = None  # 1 = grayscale, 3 = RGB; every image is converted to this, never guessed
    #                              per file; null = the source's default (digits 1, others 3)
    crop: int | None = None  # centre-crop side in source pixels before resizing; null = largest centred
    #                          square (celeba: 148, see genlab/data/sources.py for why)
    resize_filter: str = "bicubic"  # PIL filter for resizing: nearest | bilinear | bicubic | lanczos
    split: str = "auto"  # auto (official when the source has one, else random) | official | random
    val_fraction: float = 0.1  # validation share: of all images (random), or of the official train split
    #                            when the source has no official validation split (cifar10, folders)
    test_fraction: float = 0.0  # test share of all images (random split); 0: the test split, the report split
    #                            (`genlab eval`'s default), is half of the validation images (genlab.data.splits)
    split_seed: int = 42  # seed of the split, independent of the training seed
    num_parts: int = 1  # seed 000's multi-split: cut the train split into this many equal disjoint parts
    part: int = 0  # which part this run trains on (seed 000's split_id), 0 <= part < num_parts
    limit: int | None = None  # use only the first N images of the source, in sorted order (quick runs, tests)
    strict: bool = False  # a corrupt, unreadable or too-small image is an error instead of skipped
    cache_dir: str | None = None  # where prepared data is cached; null = $GENLAB_CACHE or ~/.cache/genlab
    workers: int = 0  # processes decoding images when preparing; 0 = one per CPU core
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class EvalConfig:
    """Evaluation during training (the same protocol and table as `genlab eval`)."""

    every: int = 0  # epochs between evaluations; 0 = never during training
    metrics: list[str] = field(default_factory=lambda: ["fid"])  # any of genlab eval's metrics
    n: int = TRAINING_N  # generated images per evaluation
    extractor: str = DEFAULT_EXTRACTOR  # feature extractor for fid/kid/is/pr (random-standin: tests only)
    inception_weights: str | None = None  # a local copy of the Inception weights (offline machines)


@dataclass
class TrainConfig:
    batch_size: int = 64  # images per optimisation step, over all processes (clamped to the training set size)
    accumulate: int = 1  # micro-batches each step's batch is cut into (gradient accumulation: less memory, same batch)
    epochs: int = 10  # passes over the training split
    max_steps: int | None = None  # stop after this many optimisation steps in total (null = no limit)
    max_minutes: float | None = None  # stop once training (not validation or evaluation) has run this long, over
    #                                    all sessions of the run (null = no limit): equal-time comparisons, job limits
    patience: int | None = None  # checks without a better monitored value before stopping (null = never)
    monitor: str = "val_loss"  # what early stopping and best.pt follow: val_loss, or an eval metric (fid, swd, ...)
    seed: int = 0  # seed of initialisation, data order and training noise
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp16 (with loss scaling) | fp32
    channels_last: bool = True  # NHWC memory layout for networks and batches on CUDA (faster convolutions)
    compile: bool = False  # torch.compile the networks; on failure: a warning and eager mode
    compile_mode: str = "default"  # torch.compile mode; reduce-overhead adds CUDA graphs on CUDA
    ema_decay: float = 0.0  # exponential moving average of the family's ema_targets, used to sample; 0 = off;
    #                         one update per update of those networks (a GAN under n_critic: per G step)
    ema_warmup: bool = True  # decay min(ema_decay, (1 + t) / (10 + t)) at update t, so early weights fade fast
    ema_halflife_kimg: float = 0.0  # > 0: the EMA's half-life in thousands of training images instead of a fixed
    #                                 decay (StyleGAN2-ADA's rule, which R3GAN keeps); ema_decay > 0 switches it on
    ema_rampup: float = 0.0  # with a half-life: at most this fraction of the images seen so far (0 = no ramp-up)
    posthoc_ema: list[float] = field(default_factory=list)  # sigma_rel of power-function EMAs kept for post-hoc
    #                          EMA (Karras et al. 2024; their choice: [0.05, 0.10]); [] = off; `genlab ema RUN` uses them
    posthoc_every: int = 0  # averaged-network updates between post-hoc EMA snapshots; 0 = at each epoch's end
    log_every: int = 20  # steps between reading losses back from the device (stats.jsonl, progress)
    on_divergence: str = "rollback"  # a non-finite loss or gradient norm: rollback (reload the last checkpoint with
    #                                  lower learning rates and go on) | stop (exit 1, keeping the last good checkpoint)
    rollback_lr_factor: float = 0.5  # every learning rate is multiplied by this at each rollback
    max_rollbacks: int = 3  # rollbacks before the run stops (exit 1)
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = only at the end of each epoch
    grid_every: int = 1  # epochs between sample (and reconstruction) grids; 0 = only when training ends
    num_samples: int = 64  # images in the sample grids
    sample_seed: int = 0  # first seed of the sample grids (image i uses sample_seed + i)
    report: bool = False  # write RUN_DIR/report.html (genlab report) when training ends


@dataclass
class OptimConfig:
    """One optimizer and what is done to its gradients; every family reuses it for each optimizer."""

    name: str = "adam"  # adam | adamw (decoupled weight decay, Loshchilov & Hutter 2019) | rmsprop
    lr: float = 1e-3  # learning rate
    betas: list[float] | None = None  # Adam's beta1, beta2; null = (0.9, 0.999). RMSprop has none: leave null
    alpha: float = 0.99  # RMSprop's smoothing constant of the squared-gradient average (Tieleman & Hinton 2012)
    eps: float = 1e-8  # added to the denominator
    weight_decay: float = 0.0  # adam: L2 penalty added to the gradient; adamw: decoupled decay
    lr_gamma: float = 1.0  # the learning rate is multiplied by this after every epoch (1 = constant)
    grad_clip: float = 0.0  # maximum global norm of this optimizer's gradients per step (0 = no clipping)
    agc: float = 0.0  # adaptive gradient clipping (Brock et al. 2021): unit-wise |grad| / |weight| at most this; 0 = off

    def validate(self, prefix: str = "") -> None:
        check_choice(f"{prefix}name", self.name, OPTIMIZERS)
        check_positive(f"{prefix}lr", self.lr)
        check_positive(f"{prefix}eps", self.eps)
        check_positive(f"{prefix}weight_decay", self.weight_decay, allow_zero=True)
        check_positive(f"{prefix}lr_gamma", self.lr_gamma)
        check_positive(f"{prefix}grad_clip", self.grad_clip, allow_zero=True)
        check_positive(f"{prefix}agc", self.agc, allow_zero=True)
        if not 0 <= self.alpha < 1:
            raise GenlabError(f"config key '{prefix}alpha' must be in [0, 1), got {self.alpha}")
        if self.betas is not None:
            if self.name == "rmsprop":
                raise GenlabError(f"config key '{prefix}betas': RMSprop has no betas (its smoothing constant is "
                                  f"{prefix}alpha); set {prefix}betas=null")
            if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
                raise GenlabError(f"config key '{prefix}betas' needs two values in [0, 1), got {self.betas}")


ADAM_BETAS = (0.9, 0.999)  # Kingma & Ba 2015's defaults, used when betas is null
OPTIMIZERS = ("adam", "adamw", "rmsprop")


@dataclass
class InitConfig:
    """Start a run's networks from another run's (only when it starts; a resume has its own weights)."""

    from_run: str | None = None  # a run directory (its best, else last, inference snapshot: EMA weights if any)
    networks: list[str] = field(default_factory=list)  # "own=other" network pairs; [] = the family's default
    #   (latent-ddpm: its frozen first stage from a VAE's encoder and decoder), else every shared name


@dataclass
class AdversaryConfig:
    """Fine-tune a generator against a frozen deepfake detector (`genlab detect loop`): the generator's
    own objective plus ``weight`` times softplus(detector logit) of its images, i.e. -log P(real) under
    the detector, the non-saturating form of "fool the detector". Families with ``accepts_adversary``."""

    detector_run: str | None = None  # a detector run directory (`genlab detect train`); null = off
    weight: float = 0.1  # weight of the detector term in the generator's loss

    def validate(self, prefix: str = "adversary.") -> None:
        check_positive(f"{prefix}weight", self.weight)


@dataclass
class Config:
    name: str = "custom"  # preset name; part of the run directory's name
    description: str = ""  # one line shown by `genlab presets`
    method: str = "vae"  # model family (registry name): see `genlab presets` and the README
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    init: InitConfig = field(default_factory=InitConfig)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)
    model: Any = None  # the method's own dataclass (VAEConfig, GANConfig, ...)
    sampler: Any = None  # the sampler's own dataclass, with its name (what grids and evaluation sample with)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Presets


def preset_dir() -> Path:
    return Path(str(resources.files("genlab") / "presets"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """Read a shipped preset by name, or any YAML file by path."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = preset_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            names = preset_names()
            near = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise GenlabError(f"unknown preset {name_or_path!r}{hint} (run `genlab presets` to list them)")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise GenlabError(f"cannot read preset {path}: {e}".splitlines()[0]) from e
    if not isinstance(raw, dict):
        raise GenlabError(f"preset {path} must be a mapping of keys to values")
    raw.setdefault("name", path.stem)
    return raw


# ----------------------------------------------------------------------------------------------
# Overrides and validation


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", parsed value). The value is read as YAML: 3, 0.5, true, null, [1, 2]."""
    if "=" not in text:
        raise GenlabError(f"override {text!r} must look like key=value (for example train.epochs=5)")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key:
        raise GenlabError(f"override {text!r} has no key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        key, value = parse_override(text)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise GenlabError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        sub = hints[f.name]
        if dataclasses.is_dataclass(sub):
            keys.extend(_valid_keys(sub, prefix + f.name + "."))
    return keys


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only where it is lossless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except GenlabError as e:
                errors.append(e)
        raise GenlabError(f"config key {key!r} expects {_type_name(tp)}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise GenlabError(f"config key {key!r} expects a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise GenlabError(f"config key {key!r} expects a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise GenlabError(f"config key {key!r} expects {_type_name(tp)}, got {value!r}")


def _unknown_key_error(key: str, valid: list[str]) -> GenlabError:
    near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not near:  # compare the last component too: "model.latnt" should find "model.latent_dim"
        last = key.rsplit(".", 1)[-1]
        near = [v for v in valid if difflib.get_close_matches(last, [v.rsplit(".", 1)[-1]], cutoff=0.6)][:3]
    hint = f"; nearest valid keys: {', '.join(near)}" if near else f"; valid keys: {', '.join(valid)}"
    return GenlabError(f"unknown config key {key!r}{hint}")


def build_dataclass(cls: type, raw: dict[str, Any] | None, prefix: str = "", all_keys: list[str] | None = None):
    raw = dict(raw or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    all_keys = all_keys if all_keys is not None else _valid_keys(cls, prefix)
    for key, value in raw.items():
        if key not in names:
            while isinstance(value, dict) and len(value) == 1:  # name the full key the user typed
                (sub, value), = value.items()
                key = f"{key}.{sub}"
            raise _unknown_key_error(prefix + key, all_keys)
    kwargs = {}
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in raw.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise GenlabError(f"config key {prefix + name!r} is a section; set its fields, e.g. {prefix + name}.<key>=...")
            # The keys given change the section's own default (a GAN's optimizer: Adam with beta1 = 0.5),
            # not the bare dataclass's: unset keys keep the value the field's default gives them.
            field_default = defaults[name]
            base = (field_default.default_factory() if field_default.default_factory is not dataclasses.MISSING
                    else field_default.default if field_default.default is not dataclasses.MISSING else None)
            if dataclasses.is_dataclass(base):
                value = {**dataclasses.asdict(base), **value}
            kwargs[name] = build_dataclass(tp, value, prefix + name + ".", all_keys)
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:  # validate(prefix) names nested keys in full ("model.g_optim.lr")
        check(prefix) if inspect.signature(check).parameters else check()
    return obj


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        near = difflib.get_close_matches(value, choices, n=1, cutoff=0.4)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise GenlabError(f"config key {key!r} must be one of {', '.join(choices)}, got {value!r}{hint}")


def check_positive(key: str, value: int | float | None, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise GenlabError(f"config key {key!r} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
