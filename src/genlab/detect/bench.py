"""`genlab detect train | eval | matrix | loop` as functions: each builds ordinary genlab runs (a
detector is the ``detector`` family, a fine-tuned generator its own family with
``adversary.detector_run``) and reads them back, so every run here resumes, logs and checkpoints
like any other.

Seeds: a detector trains on fakes of seeds 0.. (``model.fake_seed``), validates on seeds from
``VAL_SEED`` and is evaluated on fresh seeds from ``EVAL_SEED`` (see :mod:`genlab.detect.fakes`);
real images for evaluation are a seeded random subset of the report split (test, else val) of the
real source, never the split the detector trained on.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch

from genlab.analysis.common import pyplot
from genlab.config import EvalSettings, apply_overrides, load_preset
from genlab.data import SOURCES, build_dataset
from genlab.data.cache import ImageSplits
from genlab.data.subsets import random_subset
from genlab.detect.adversary import attach_adversary, load_detector
from genlab.detect.encoding import JPEG_QUALITY, describe, jpeg
from genlab.detect.evaluate import LAUNDERING, LAUNDERING_PROTOCOL, evaluate_against
from genlab.detect.fakes import EVAL_SEED, VAL_SEED, FakeSource, check_same_shape, fake_label, load_fake_source
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.methods import METHODS
from genlab.metrics.evaluate import Evaluator
from genlab.resolve import load_run_config, resolve_config
from genlab.train.checkpoint import load_checkpoint
from genlab.train.rundir import find_checkpoint, training_finished
from genlab.train.session import named_run_plan, resume_training, start_training

log = logging.getLogger("genlab")

MIN_HELD_OUT = 20  # real images below which an AUC says too little to report
DEFAULT_EVAL_N = 1000  # held-out reals (and fakes per generator) by default


# -- configs ---------------------------------------------------------------------------------------
def fake_image_shape(path: str | Path) -> tuple[int, int, int]:
    """The image shape a fake source makes, read from its checkpoint header or array, without
    building its model."""
    path = Path(path).expanduser()
    if not path.exists():
        raise GenlabError(f"fake {path}: no such run directory or .npz file")
    if path.suffix == ".npz":
        try:
            with np.load(path) as f:
                shape = f["images"].shape
        except Exception as e:
            raise GenlabError(f"fake {path}: not an .npz with an 'images' array ({str(e).splitlines()[0]})") from e
        if len(shape) != 4:
            raise GenlabError(f"fake {path}: 'images' must be (N, C, H, W), got shape {tuple(shape)}")
        return tuple(int(d) for d in shape[1:])
    payload = load_checkpoint(find_checkpoint(path, "last", inference=True))
    if payload.get("method") == "detector":
        raise GenlabError(f"fake {path} is a 'detector' run, which generates no images; pass generator runs "
                          "(a detector run goes where DETECTOR_RUN is asked for)")
    return tuple(payload["image_shape"])


def _data_section(real: str, root: str | None, overrides: list[str], image_shape) -> dict:
    """The data section for a real SOURCE (a data source or a preset whose data section is used),
    with --root and data.* overrides; size and channels follow ``image_shape`` unless set."""
    section = {"source": real} if real in SOURCES else dict(load_preset(real).get("data") or {})
    raw = apply_overrides({"data": section}, [o for o in overrides if o.startswith("data.")])["data"]
    if root is not None:
        raw["root"] = str(root)
    if image_shape is not None:
        raw.setdefault("channels", int(image_shape[0]))
        raw.setdefault("size", int(image_shape[1]))
    return raw


def detector_config(real: str, fakes: list[str], overrides: list[str] | None = None, root: str | None = None):
    """The resolved config of a detector for real images of ``real`` against ``fakes``: the shipped
    ``detector`` preset, the real data, model.fakes, then ``key=value`` overrides."""
    overrides = list(overrides or [])
    if not fakes:
        raise GenlabError("--fake names no generator runs (or .npz files) to detect")
    shapes = {str(f): fake_image_shape(f) for f in fakes}
    first = shapes[str(fakes[0])]
    for f, shape in shapes.items():
        if shape != first:
            raise GenlabError(f"fake {f} makes {'x'.join(map(str, shape))} images but fake {fakes[0]} makes "
                              f"{'x'.join(map(str, first))}; one detector takes one image shape")
    raw = load_preset("detector")
    raw["data"] = {**dict(raw.get("data") or {}), **_data_section(real, root, overrides, first)}
    raw = apply_overrides(raw, [o for o in overrides if not o.startswith("data.")])
    raw.setdefault("model", {})["fakes"] = [str(Path(f).expanduser()) for f in fakes]
    return resolve_config(raw)


def train_named(cfg, run_dir: Path, device: torch.device, quiet: bool = True) -> Path:
    """Train ``cfg`` in ``run_dir``: started there, resumed when it holds this config's unfinished
    run, left as it is when that run finished (a benchmark re-run continues where it stopped)."""
    action, changed = named_run_plan(cfg, run_dir)
    if action == "resume":
        if training_finished(run_dir) and not changed:
            log.info("%s: finished earlier, kept", run_dir)
            return run_dir
        return resume_training(run_dir, changed, device, quiet=quiet, extend=attach_adversary)
    return start_training(cfg, Path(run_dir).parent, device, quiet=quiet, run_dir=run_dir, extend=attach_adversary)


def train_detector(real: str, fakes: list[str], device: torch.device, overrides: list[str] | None = None,
                   root: str | None = None, runs_dir: Path = Path("runs"), run_dir: Path | None = None,
                   quiet: bool = False) -> Path:
    """`genlab detect train`: a detector run (a new numbered directory below ``runs_dir``, or
    ``run_dir``), trained through the one loop; returns its directory."""
    cfg = detector_config(real, fakes, overrides, root)
    if run_dir is not None:
        return train_named(cfg, Path(run_dir), device, quiet)
    return start_training(cfg, runs_dir, device, quiet=quiet, extend=attach_adversary)


# -- evaluation ------------------------------------------------------------------------------------
def held_out_real(data: ImageSplits, split: str | None, n: int | None, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``n`` images (all when None, at most DEFAULT_EVAL_N) of the held-out split (the report split:
    test when it has images, else val), a random subset drawn with ``seed`` (never the first n: a split
    is stored in key order, by class for a folder source); returns them and their description."""
    split = data.resolve_split(split or "report")
    images = data.split(split)
    count = 0 if images is None else len(images)
    if n is not None and n > count:
        raise GenlabError(f"--n {n}: the {split} split of {data.name} has {count} images; ask for at most {count} or "
                          "use a larger split (data.val_fraction / data.test_fraction)")
    if count < MIN_HELD_OUT:
        raise GenlabError(f"the {split} split of {data.name} has {count} images; a detector needs at least "
                          f"{MIN_HELD_OUT} held-out real images to be scored (set data.val_fraction or data.test_fraction)")
    return random_subset(images, n or min(count, DEFAULT_EVAL_N), seed, split)


def write_control_fakes(data_cfg, path: Path, n: int | None = None, seed: int = EVAL_SEED,
                        quality: int = JPEG_QUALITY) -> dict:
    """The detector benchmark's control: an .npz of "fakes" that are real images re-encoded as JPEG
    at ``quality``, nothing generated. Seeds 0.. are the training split (the very images the real
    class trains on), VAL_SEED.. the choice split, and ``seed``.. the same random subset of the
    report split that the evaluation draws as its reals (``n`` of them), in the same order. A
    detector trained on it can only learn the encoding: its AUC must sit at chance, or the
    benchmark's detectors may be reading compression traces too. Returns what was written."""
    data = build_dataset(data_cfg)
    evaluated, how = held_out_real(data, None, n, seed)
    parts = [(data.train, 0), (data.split("choice"), VAL_SEED), (evaluated, seed)]
    images = torch.cat([jpeg(p, quality) for p, _ in parts])
    seeds = np.concatenate([np.arange(first, first + len(p)) for p, first in parts])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a bare name
            np.savez(f, images=images.numpy(), seeds=seeds)

    atomic_write(path, write, "control fakes")
    return {"path": str(path), "images": len(images), "quality": quality,
            "what": f"real images re-encoded as JPEG quality {quality}: all {len(data.train)} training images "
                    f"(seeds 0..), the choice split from seed {VAL_SEED}, and the evaluated reals ({how}) from seed {seed}"}


def _unique_labels(sources: list[FakeSource]) -> list[str]:
    labels, seen = [], {}
    for s in sources:
        seen[s.label] = seen.get(s.label, 0) + 1
        labels.append(s.label if seen[s.label] == 1 else f"{s.label}-{seen[s.label]}")
    return labels


class EvalSet:
    """Held-out real images and fresh fakes of each generator, drawn once and shared by every
    detector scored on them (the matrix scores all its detectors on the same images)."""

    def __init__(self, data_cfg, fakes: list[str], device: torch.device, n: int | None = None, seed: int = EVAL_SEED,
                 split: str | None = None, batch_size: int = 256, detector_shape=None, detector_run=None):
        self.data_cfg = data_cfg
        data = build_dataset(data_cfg)
        self.image_shape = data.image_shape
        if detector_shape is not None:  # the detector's input first: that is the mismatch to name
            self.check_detector({"image_shape": detector_shape}, detector_run)
        self.real, self.real_subset = held_out_real(data, split, n, seed)
        self.data_name, self.image_shape = data.name, data.image_shape
        sources = [load_fake_source(f, device) for f in fakes]
        self.sources = dict(zip(_unique_labels(sources), sources))
        self.fakes = {}
        for label, source in self.sources.items():
            check_same_shape(source, data.image_shape, f"{data.name} ({data_cfg.source})")
            self.fakes[label] = source.draw(len(self.real), seed, batch_size)
            source.method = None
        self.seed = seed

    def protocol(self) -> str:
        c, h, w = self.image_shape
        crop = f", crop {self.data_cfg.crop}" if self.data_cfg.crop else ""
        return (f"real: {self.real_subset} images of {self.data_name}{crop}, {h}x{w}, {c} "
                f"channel(s); fakes: {len(self.real)} per generator, seeds {self.seed}..{self.seed + len(self.real) - 1}; "
                "AUC and TPR at 1% FPR of P(generated), balanced accuracy at 0.5")

    def check_detector(self, payload: dict, run: Path) -> None:
        if tuple(payload["image_shape"]) != tuple(self.image_shape):
            raise GenlabError(f"detector {run} takes images of shape {payload['image_shape']}, but the real data "
                              f"gives {list(self.image_shape)}")


def evaluate_detector_run(detector_run: str | Path, fakes: list[str], device: torch.device, real: str | None = None,
                          root: str | None = None, overrides: list[str] | None = None, n: int | None = None,
                          seed: int = EVAL_SEED, split: str | None = None, launder: bool = True,
                          eval_set: EvalSet | None = None) -> dict:
    """`genlab detect eval`: per generator, accuracy, AUC, TPR at 1% FPR (and AUC after each laundering
    transform) of a detector run on held-out reals and fresh fakes. The real data is ``real`` (with
    --root and data.* overrides), else the detector's own data config."""
    detector_run = Path(detector_run).expanduser()
    detector, dcfg, payload = load_detector(detector_run, device, "DETECTOR_RUN")
    if eval_set is None:
        if real is None:
            data_cfg = dcfg.data
        else:
            data_cfg = resolve_config({"data": _data_section(real, root, list(overrides or []), payload["image_shape"])}).data
        eval_set = EvalSet(data_cfg, fakes, device, n, seed, split, detector_shape=payload["image_shape"],
                           detector_run=detector_run)
    eval_set.check_detector(payload, detector_run)
    results = evaluate_against(detector, eval_set.real, eval_set.fakes, launder)
    for label, source in eval_set.sources.items():
        results[label].update({"fake": str(source.path), "family": source.family})
    return {"detector": str(detector_run), "step": payload["progress"]["step"],
            "protocol": f"{eval_set.protocol()}; {describe(dcfg.model.encoding)}",
            "laundering": LAUNDERING_PROTOCOL if launder else None, "results": results}


def format_results(report: dict) -> str:
    names = list(LAUNDERING)
    lines = [f"{'generator':<28} {'family':<10} {'acc':>6} {'auc':>6} {'tpr@1%':>7}"
             + "".join(f" {n:>9}" for n in names)]
    for label, r in report["results"].items():
        washed = r.get("laundered") or {}
        lines.append(f"{label[:28]:<28} {r.get('family', ''):<10} {r['accuracy']:6.3f} {r['auc']:6.3f} "
                     f"{r['tpr_at_1pct_fpr']:7.3f}" + "".join(f" {washed[n]:9.3f}" if n in washed else f" {'-':>9}"
                                                             for n in names))
    lines.append(f"[{report['protocol']}]")
    if report.get("laundering"):
        lines.append(f"[laundered columns: AUC after {report['laundering']}]")
    return "\n".join(lines)


def write_json(path: Path, value: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"), "file")


# -- the matrix ------------------------------------------------------------------------------------
def detection_matrix(real: str, fakes: list[str], out_dir: Path, device: torch.device, overrides: list[str] | None = None,
                     root: str | None = None, n: int | None = None, seed: int = EVAL_SEED, quiet: bool = True) -> dict:
    """`genlab detect matrix`: one detector per generator (``out_dir/detectors/<name>``), each scored on
    every generator's fresh fakes: AUC[i][j] = detector trained on i, tested on j; plus each
    detector's AUC on its own generator after each laundering transform. Writes
    ``out_dir/matrix.json`` and ``out_dir/matrix.png``; a re-run keeps finished detectors."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GenlabError(f"--out {out_dir} exists and is not a folder")
    labels = _unique_labels([FakeSource(fake_label(Path(f)), Path(f), (0, 0, 0)) for f in fakes])
    configs = [detector_config(real, [f], overrides, root) for f in fakes]  # every fake checked before training
    runs = {}
    for label, cfg in zip(labels, configs):
        log.info("matrix: detector for %s", label)
        runs[label] = train_named(cfg, out_dir / "detectors" / label, device, quiet)
    eval_set = EvalSet(configs[0].data, fakes, device, n, seed)
    pairs, robustness = {}, {}
    for row in labels:
        report = evaluate_detector_run(runs[row], fakes, device, launder=False, eval_set=eval_set)
        for col, result in report["results"].items():
            pairs[f"{row} -> {col}"] = result
        own = evaluate_detector_run(runs[row], fakes, device, launder=True, eval_set=_only(eval_set, row))
        robustness[row] = {"clean": own["results"][row]["auc"], **own["results"][row]["laundered"]}
    metric = lambda key: [[pairs[f"{r} -> {c}"][key] for c in labels] for r in labels]  # noqa: E731
    result = {
        "rows_trained_on": labels, "columns_tested_on": labels,
        "auc": metric("auc"), "tpr_at_1pct_fpr": metric("tpr_at_1pct_fpr"), "accuracy": metric("accuracy"),
        "robustness_auc": robustness, "pairs": pairs,
        "generators": {label: {"path": str(Path(f).expanduser()), "family": eval_set.sources[label].family}
                       for label, f in zip(labels, fakes)},
        "detectors": {label: str(path) for label, path in runs.items()},
        "detector_arch": configs[0].model.arch,
        "protocol": eval_set.protocol(), "laundering": LAUNDERING_PROTOCOL,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "matrix.json", result)
    plot_matrix(result, out_dir / "matrix.png")
    log.info("wrote %s and %s", out_dir / "matrix.json", out_dir / "matrix.png")
    return result


def _only(eval_set: EvalSet, label: str) -> EvalSet:
    """The same real images with only one generator's fakes."""
    one = copy.copy(eval_set)
    one.fakes, one.sources = {label: eval_set.fakes[label]}, {label: eval_set.sources[label]}
    return one


def plot_matrix(result: dict, path: Path) -> None:
    """Two heat maps: AUC of each detector (rows) on each generator (columns), and each detector's AUC
    on its own generator after laundering."""
    plt = pyplot()
    rows = result["rows_trained_on"]
    washed_names = ["clean", *LAUNDERING]
    washed = [[result["robustness_auc"][r][k] for k in washed_names] for r in rows]
    size = max(3.0, 0.9 * len(rows) + 1.8)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.5, size), gridspec_kw={"width_ratios": [len(rows), 4]})
    for ax, values, cols, title in ((axes[0], result["auc"], result["columns_tested_on"], "AUC: trained on (row), tested on (column)"),
                                    (axes[1], washed, washed_names, "AUC on its own generator after laundering")):
        # 0.5 is chance; below it a detector ranks that generator's fakes as more real than real images
        im = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="RdBu_r")
        ax.set_xticks(range(len(cols)), [c[:24] for c in cols], rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), [r[:24] for r in rows] if ax is axes[0] else [], fontsize=8)
        for i, line in enumerate(values):
            for j, v in enumerate(line):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(v - 0.5) > 0.3 else "black")
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="ROC AUC (0.5 = chance; below: fakes judged more real than reals)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# -- the adversarial loop --------------------------------------------------------------------------
def generator_swd(run: Path, device: torch.device, n: int, seed: int = EVAL_SEED) -> dict:
    """SWD of ``n`` fresh samples of a generator run against its data's report split (as `genlab
    eval`), with its protocol."""
    source = load_fake_source(run, device)
    cfg = load_run_config(str(run))
    data = build_dataset(cfg.data)
    settings = EvalSettings(metrics=["swd"], n=n, split="report", seed=seed)
    results, _ = Evaluator(data, cfg.data, settings, device).score_method(source.method, ["swd"], f"{cfg.method} {run.name}")
    return results["swd"]


def fine_tune_config(generator_run: Path, detector_run: Path, weight: float, epochs: int):
    """The generator's own config, started from its weights (init.from_run), with the detector's term
    added to its loss (adversary.*) for ``epochs`` more epochs."""
    raw = load_run_config(str(generator_run)).to_dict()
    raw["init"] = {"from_run": str(generator_run), "networks": []}
    raw["adversary"] = {"detector_run": str(detector_run), "weight": weight}
    raw["train"].update({"epochs": epochs, "max_steps": None, "max_minutes": None, "patience": None})
    raw["name"] = f"{raw['name']}-evade"
    return resolve_config(raw)


def adversarial_loop(real: str, generator: str | Path, out_dir: Path, device: torch.device, rounds: int = 3,
                     weight: float = 0.1, generator_epochs: int = 1, overrides: list[str] | None = None,
                     root: str | None = None, n: int | None = None, swd_n: int = 2000, quiet: bool = True) -> dict:
    """`genlab detect loop`: K rounds of (1) a fresh detector trained on the current generator's fakes,
    (2) the generator fine-tuned against that frozen detector. Per round: the detector's AUC on fresh
    samples before the generator's phase and after it (did the generator learn to evade it?), and
    the fine-tuned generator's SWD (at what cost in quality). Writes ``out_dir/loop.json``."""
    if rounds < 1:
        raise GenlabError(f"--rounds must be at least 1, got {rounds}")
    generator = Path(generator).expanduser()
    if weight <= 0 or generator_epochs < 1:
        raise GenlabError(f"--weight must be > 0 and --generator-epochs at least 1, got {weight} and {generator_epochs}")
    fake_image_shape(generator)  # a generator run, not a detector or a missing path
    family = METHODS.get(load_run_config(str(generator)).method)
    if not family.accepts_adversary:
        raise GenlabError(f"{generator} is a {family.name!r} run, which cannot be fine-tuned against a detector "
                          "(families that can: gan, vae)")
    out_dir = Path(out_dir)
    current = generator
    start = generator_swd(current, device, swd_n)
    record = {"generator": str(generator), "weight": weight, "generator_epochs": generator_epochs,
              "swd_protocol": start["protocol"], "swd_start": start["value"], "rounds": []}
    for r in range(1, rounds + 1):
        folder = out_dir / f"round-{r}"
        detector = train_named(detector_config(real, [str(current)], overrides, root), folder / "detector", device, quiet)
        before = evaluate_detector_run(detector, [str(current)], device, real, root, overrides, n, launder=False)
        tuned = train_named(fine_tune_config(current, detector, weight, generator_epochs), folder / "generator", device, quiet)
        after = evaluate_detector_run(detector, [str(tuned)], device, real, root, overrides, n, launder=False)
        swd = generator_swd(tuned, device, swd_n)
        (b,), (a,) = before["results"].values(), after["results"].values()
        entry = {"round": r, "detector": str(detector), "generator": str(tuned), "auc_before": b["auc"],
                 "auc_after": a["auc"], "tpr_at_1pct_fpr_before": b["tpr_at_1pct_fpr"],
                 "tpr_at_1pct_fpr_after": a["tpr_at_1pct_fpr"], "swd": swd["value"]}
        record["rounds"].append(entry)
        record["eval_protocol"] = before["protocol"]
        log.info("round %d: detector AUC %.3f on the generator's samples before its phase, %.3f after; SWD %.3f "
                 "(start %.3f)", r, b["auc"], a["auc"], swd["value"], start["value"])
        current = tuned
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "loop.json", record)
    return record
