"""From a preset and ``key=value`` overrides to a validated :class:`~genlab.config.Config`.

The one place that knows every registry: the method (and with it the ``model`` section's class),
the sampler (the ``sampler`` section's class), data sources, speed settings and metrics. Each
registry checks its own names; the family's declared abilities are checked here, so asking a
family for what it cannot do (early stopping on a validation loss it does not have, a metric it
cannot give, EMA of no network) is refused before anything is trained or written.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import yaml

from genlab.config import (
    COMPILE_MODES,
    PRECISIONS,
    Config,
    _valid_keys,
    apply_overrides,
    build_dataclass,
    check_choice,
    check_positive,
    load_preset,
)
from genlab.data.sources import SOURCES, apply_source_defaults
from genlab.errors import GenlabError
from genlab.methods import METHODS
from genlab.methods.base import LATENT_KINDS
from genlab.metrics.table import check_metrics_apply, parse_metrics
from genlab.samplers import SAMPLERS

log = logging.getLogger("genlab")


def migrate_renamed(config_class: type, raw: dict[str, Any], prefix: str = "model.") -> dict[str, Any]:
    """Keys a family has renamed (``config_class.RENAMED``: old -> new dotted keys) moved to where they
    live now, with a warning; a value under the old name wins, since it is the one the user wrote."""
    for old, new_keys in getattr(config_class, "RENAMED", {}).items():
        if old not in raw:
            continue
        value = raw.pop(old)
        for new in new_keys:
            section, _, key = new.partition(".")
            node = raw.setdefault(section, {})
            if not isinstance(node, dict):
                raise GenlabError(f"config key '{prefix}{section}' is a section; set its fields, e.g. {prefix}{new}=...")
            node[key] = copy.deepcopy(value)
        log.warning("config key '%s%s' is now %s", prefix, old, " and ".join(f"'{prefix}{n}'" for n in new_keys))
    return raw


def resolve_config(raw: dict[str, Any]) -> Config:
    """Nested dict (preset + overrides) -> validated Config with the method's own ``model`` section
    and the sampler's own ``sampler`` section."""
    raw = copy.deepcopy(raw)
    method_name = raw.get("method", Config.method)
    if not isinstance(method_name, str):
        raise GenlabError(f"config key 'method' expects str, got {method_name!r}")
    method_cls = METHODS.get(method_name)
    raw["method"] = METHODS.canonical(method_name)  # `dcgan` is stored as `gan`
    model_raw = raw.pop("model", None) or {}
    sampler_raw = raw.pop("sampler", None) or {}
    for key, section in (("model", model_raw), ("sampler", sampler_raw)):
        if not isinstance(section, dict):
            raise GenlabError(f"config key '{key}' is a section; set its fields, e.g. {key}.<key>=...")
    model_raw = migrate_renamed(method_cls.config_class, model_raw)
    sampler_cls = None
    if method_cls.samplers:
        sampler_name = sampler_raw.get("name") or method_cls.samplers[0]
        sampler_name = SAMPLERS.canonical(str(sampler_name))
        if sampler_name not in method_cls.samplers:
            raise GenlabError(f"sampler.name={sampler_name}: method {method_cls.name!r} samples with "
                              f"{', '.join(method_cls.samplers)}")
        sampler_cls = SAMPLERS.get(sampler_name).options_class
    elif sampler_raw:
        raise GenlabError(f"sampler.{next(iter(sampler_raw))}: method {method_cls.name!r} makes no images, so it has no sampler")
    all_keys = ([k for k in _valid_keys(Config) if k not in ("model", "sampler")]
                + [f"model.{k}" for k in _valid_keys(method_cls.config_class)]
                + ([f"sampler.{k}" for k in _valid_keys(sampler_cls)] if sampler_cls else []))
    cfg = build_dataclass(Config, raw, "", all_keys)
    cfg.model = build_dataclass(method_cls.config_class, model_raw, "model.", all_keys)
    if sampler_cls is not None:
        cfg.sampler = build_dataclass(sampler_cls, {**sampler_raw, "name": sampler_name}, "sampler.", all_keys)
    validate_config(cfg)
    resolve_init(cfg, method_cls)
    check_abilities(cfg, method_cls)
    method_cls.check_config(cfg)
    return cfg


def init_mapping(networks: list[str]) -> dict[str, str]:
    """init.networks ["generator=decoder", "critic"] -> {"generator": "decoder", "critic": "critic"}."""
    mapping = {}
    for entry in networks:
        own, _, other = entry.partition("=")
        if not own.strip() or (_ and not other.strip()):
            raise GenlabError(f"init.networks entry {entry!r} must be NAME or OWN=OTHER (network names)")
        mapping[own.strip()] = other.strip() or own.strip()
    return mapping


def load_run_config(run_dir: str) -> Config:
    """The resolved config a run directory records (its config.yaml)."""
    path = Path(run_dir).expanduser() / "config.yaml"
    if not path.is_file():
        raise GenlabError(f"init.from_run={run_dir}: not a genlab run directory (no {path})")
    try:
        raw = yaml.safe_load(path.read_text())
        return resolve_config(raw)
    except (OSError, yaml.YAMLError, GenlabError) as e:
        raise GenlabError(f"init.from_run={run_dir}: its config.yaml cannot be used: {str(e).splitlines()[0]}") from e


def resolve_init(cfg: Config, method_cls) -> None:
    """Check init.* and let the family copy what it needs from the named run's config (a latent
    family's first stage), reading that run only when the family's section does not hold it yet:
    a resumed run does not need its base run any more."""
    init_mapping(cfg.init.networks)
    if cfg.init.from_run is None:
        if cfg.init.networks:
            raise GenlabError("init.networks names networks to copy, but init.from_run names no run to copy them from")
        return
    method_cls.configure_from_base(cfg.model, lambda: load_run_config(cfg.init.from_run))


def load_config(preset: str, overrides: list[str] | None = None) -> Config:
    return resolve_config(apply_overrides(load_preset(preset), overrides or []))


def validate_config(cfg: Config) -> None:
    """Cross-field checks that the type annotations cannot express."""
    cfg.data.source = SOURCES.canonical(cfg.data.source)
    apply_source_defaults(cfg.data)  # the resolved config (and --dry-run) states every choice
    check_choice("data.channels", str(cfg.data.channels), ("1", "3"))
    check_choice("data.resize_filter", cfg.data.resize_filter, ("nearest", "bilinear", "bicubic", "lanczos"))
    check_choice("train.precision", cfg.train.precision, PRECISIONS)
    check_choice("train.compile_mode", cfg.train.compile_mode, COMPILE_MODES)
    if cfg.data.size < 8 or cfg.data.size & (cfg.data.size - 1):
        raise GenlabError(f"config key 'data.size' must be a power of two >= 8 (32 or 64), got {cfg.data.size}")
    check_choice("data.split", cfg.data.split, ("auto", "official", "random"))
    for key in ("val_fraction", "test_fraction"):
        if not 0.0 <= getattr(cfg.data, key) < 1.0:
            raise GenlabError(f"config key 'data.{key}' must be in [0, 1), got {getattr(cfg.data, key)}")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1.0:
        raise GenlabError("data.val_fraction + data.test_fraction must leave some images for training")
    check_positive("data.num_parts", cfg.data.num_parts)
    if not 0 <= cfg.data.part < cfg.data.num_parts:
        raise GenlabError(f"config key 'data.part' must be in [0, {cfg.data.num_parts}), got {cfg.data.part}")
    check_positive("data.workers", cfg.data.workers, allow_zero=True)
    aug = cfg.data.augment
    for key in ("rotate", "blur_sigma", "color_jitter"):
        check_positive(f"data.augment.{key}", getattr(aug, key), allow_zero=True)
    if not 0.0 <= aug.blur_p <= 1.0 or aug.color_jitter >= 1.0:
        raise GenlabError("data.augment.blur_p must be in [0, 1] and data.augment.color_jitter below 1")
    for key in ("batch_size", "accumulate", "epochs", "log_every", "num_samples"):
        check_positive(f"train.{key}", getattr(cfg.train, key))
    for key in ("max_steps", "patience", "max_minutes"):
        check_positive(f"train.{key}", getattr(cfg.train, key))
    for key in ("checkpoint_every", "grid_every"):
        check_positive(f"train.{key}", getattr(cfg.train, key), allow_zero=True)
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise GenlabError(f"config key 'train.ema_decay' must be in [0, 1) (0 = off), got {cfg.train.ema_decay}")
    check_positive("train.ema_halflife_kimg", cfg.train.ema_halflife_kimg, allow_zero=True)
    check_positive("train.ema_rampup", cfg.train.ema_rampup, allow_zero=True)
    if (cfg.train.ema_halflife_kimg or cfg.train.ema_rampup) and not cfg.train.ema_decay:
        raise GenlabError("train.ema_halflife_kimg and train.ema_rampup shape an EMA that train.ema_decay > 0 switches on")
    check_positive("train.posthoc_every", cfg.train.posthoc_every, allow_zero=True)
    for sigma_rel in cfg.train.posthoc_ema:
        if not 0 < sigma_rel < 0.2886:
            raise GenlabError(f"train.posthoc_ema: sigma_rel {sigma_rel} is outside (0, 0.2886), the widths a "
                              "power-function EMA can have (Karras et al. 2024, eq. 3)")
    if cfg.train.ema_rampup and not cfg.train.ema_halflife_kimg:
        raise GenlabError("train.ema_rampup ramps up a half-life: set train.ema_halflife_kimg too")
    if cfg.train.accumulate > cfg.train.batch_size:
        raise GenlabError(f"train.accumulate={cfg.train.accumulate} cuts a batch of {cfg.train.batch_size} into "
                          "more micro-batches than it has images")
    check_choice("train.on_divergence", cfg.train.on_divergence, ("rollback", "stop"))
    if not 0 < cfg.train.rollback_lr_factor < 1:
        raise GenlabError(f"config key 'train.rollback_lr_factor' must be in (0, 1), got {cfg.train.rollback_lr_factor}")
    check_positive("train.max_rollbacks", cfg.train.max_rollbacks, allow_zero=True)
    check_positive("eval.every", cfg.eval.every, allow_zero=True)
    check_positive("eval.n", cfg.eval.n)
    cfg.eval.metrics = parse_metrics(cfg.eval.metrics)
    check_positive("data.crop", cfg.data.crop)
    check_positive("data.limit", cfg.data.limit)


def check_abilities(cfg: Config, method_cls) -> None:
    """What the config asks of the family against what the family declares it can do."""
    if method_cls.latent_kind not in LATENT_KINDS:
        raise GenlabError(f"method {method_cls.name!r} declares latent_kind {method_cls.latent_kind!r}; "
                          f"it must be one of {', '.join(LATENT_KINDS)}")
    check_metrics_apply(cfg.eval.metrics, method_cls, "eval.metrics")
    train = cfg.train
    if train.monitor == "val_loss":
        if train.patience is not None and not method_cls.has_validation_loss:
            raise GenlabError(f"train.patience={train.patience}: method {method_cls.name!r} has no validation loss to "
                              "watch; set train.monitor to an evaluated metric (with eval.every > 0), or leave "
                              "train.patience unset")
    else:
        metric = parse_metrics([train.monitor])[0]  # precision -> pr, ssim -> recon, ...
        if cfg.eval.every == 0 or metric not in cfg.eval.metrics:
            raise GenlabError(f"train.monitor={train.monitor} needs eval.every > 0 and {metric} in eval.metrics "
                              f"(now every={cfg.eval.every}, metrics={cfg.eval.metrics})")
    if cfg.adversary.detector_run is not None and not method_cls.accepts_adversary:
        raise GenlabError(f"adversary.detector_run: method {method_cls.name!r} cannot be fine-tuned against a detector "
                          "(families that can: those with accepts_adversary, e.g. gan and vae)")
    if train.posthoc_ema and not method_cls.ema_targets:
        raise GenlabError(f"train.posthoc_ema: method {method_cls.name!r} names no networks to average "
                          "(its ema_targets is empty)")
    if train.ema_decay > 0 and not method_cls.ema_targets:
        raise GenlabError(f"train.ema_decay={train.ema_decay}: method {method_cls.name!r} names no networks to average "
                          "(its ema_targets is empty)")


def with_sampler_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``sampler.*`` overrides applied (`genlab sample RUN sampler.temperature=0.7`); any
    other key is refused, since it would describe another model than the checkpoint holds. Naming
    another sampler starts from that sampler's defaults."""
    for text in overrides:
        key = text.partition("=")[0].strip()
        if not key.startswith("sampler."):
            raise GenlabError(f"only sampler.* keys may be set here (the model is the checkpoint's), got {key!r}")
    raw = cfg.to_dict()
    wanted = apply_overrides({"sampler": {}}, overrides)["sampler"]
    if "name" in wanted and SAMPLERS.canonical(str(wanted["name"])) != cfg.sampler.name:
        raw["sampler"] = {}
    raw["sampler"].update(wanted)
    return resolve_config(raw)


def with_evaluation_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with the overrides `genlab eval RUN` accepts: ``sampler.*`` keys, and ``model.KEY`` for
    the keys the family names in ``evaluation_keys`` (they change how the model is scored, not the
    model); anything else is refused, since it would describe another model than the checkpoint holds."""
    method_cls = METHODS.get(cfg.method)
    sampler = [o for o in overrides if o.partition("=")[0].strip().startswith("sampler.")]
    model = [o for o in overrides if o not in sampler]
    for text in model:
        key = text.partition("=")[0].strip()
        if not key.startswith("model.") or key.removeprefix("model.") not in method_cls.evaluation_keys:
            takes = ", ".join(f"model.{k}" for k in method_cls.evaluation_keys)
            raise GenlabError(f"{key}: method {cfg.method!r} takes only sampler.* keys{' and ' + takes if takes else ''} "
                              "at evaluation (the model is the checkpoint's)")
    if sampler:
        cfg = with_sampler_overrides(cfg, sampler)
    return resolve_config(apply_overrides(cfg.to_dict(), model)) if model else cfg
