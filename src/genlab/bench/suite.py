"""A bench suite: which presets to rank, on which data, under which budget and protocol.

A suite is a YAML file (shipped ones in ``src/genlab/suites/``, or any user's path)::

    description: every family on this project's CPU budget
    data: [data.source=celeba, data.size=32]     # overrides every entry shares: one data set, one size
    budget: {minutes: 7}                          # or {images: 40960} or {steps: 320}: equal for every entry
    seeds: [0, 1, 2]
    metrics: [swd]                                # scored on the report split after training
    eval_n: 2000                                  # samples per metric
    splits: {choice: choice, report: report}      # genlab eval --split roles (choices / reported numbers)
    curve: {every: 1, n: 500}                     # in-training choice-split evaluation: quality against time
    entries:
      - preset: ddpm-celeba32
        name: ddpm                                # its leaderboard name (default: the preset)
        overrides: [model.width=32]
        samplers: {ddim10: [sampler.steps=10], ddim35: [sampler.steps=35]}   # each a leaderboard row

Everything is checked when the suite is loaded, before anything runs: an unknown suite key, an
unknown preset or config key (named with the suite's line), a budget that is not positive, and
entries that would not see the same data (source, root, size, channels, crop and splits).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from genlab.config import Config
from genlab.errors import GenlabError
from genlab.metrics.table import parse_metrics
from genlab.resolve import load_config, with_evaluation_overrides

BUDGET_KINDS = ("minutes", "images", "steps")
# what makes two entries' data the same images in the same splits (augmentation and caching do not)
SHARED_DATA_KEYS = ("source", "root", "size", "channels", "crop", "resize_filter", "split", "val_fraction",
                    "test_fraction", "split_seed", "num_parts", "part", "limit")
SUITE_KEYS = ("description", "data", "budget", "seeds", "metrics", "eval_n", "splits", "curve", "grid_n", "speed_n",
              "detectors", "entries")
ENTRY_KEYS = ("preset", "name", "overrides", "samplers")
# a budget binds, not the preset's epochs or early stopping: every entry gets the same compute
BUDGET_FREE = ("train.epochs=1000000", "train.patience=null")


@dataclass
class Entry:
    preset: str
    name: str
    overrides: list[str] = field(default_factory=list)
    samplers: dict[str, list[str]] = field(default_factory=lambda: {"": []})  # row suffix -> sampler.* overrides
    line: int = 0  # where it stands in the suite file

    def row(self, sampler: str) -> str:
        return f"{self.name} {sampler}" if sampler else self.name


@dataclass
class Suite:
    name: str
    entries: list[Entry]
    description: str = ""
    data: list[str] = field(default_factory=list)
    budget: dict = field(default_factory=lambda: {"minutes": 1.0})  # one of BUDGET_KINDS -> its amount
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    metrics: list[str] = field(default_factory=lambda: ["swd"])
    eval_n: int = 2000
    splits: dict = field(default_factory=lambda: {"choice": "choice", "report": "report"})
    curve: dict = field(default_factory=lambda: {"every": 1, "n": 500})
    grid_n: int = 36  # samples in each entry's grid (seeds 0..grid_n-1: the same seeds for every entry)
    speed_n: int = 64  # images timed for the sampling speed
    detectors: dict | None = None  # {overrides: [detector keys], n: images}: the detector matrix per seed (bench.detectors)
    path: str = ""

    @property
    def budget_kind(self) -> str:
        return next(iter(self.budget))

    def describe_budget(self) -> str:
        kind, amount = self.budget_kind, self.budget[self.budget_kind]
        return {"minutes": f"{amount:g} minutes of training wall time per run (validation and evaluation excluded)",
                "images": f"{amount:g} training images seen per run", "steps": f"{amount:g} optimiser steps per run"}[kind]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> Suite:
        return cls(**{**raw, "entries": [Entry(**e) for e in raw["entries"]]})


def shipped_suites() -> list[str]:
    return sorted(p.stem for p in Path(str(resources.files("genlab") / "suites")).glob("*.yaml"))


def suite_path(name_or_path: str) -> Path:
    """A shipped suite's file, or a user's YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise GenlabError(f"no such suite file: {path}")
        return path
    shipped = Path(str(resources.files("genlab") / "suites")) / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise GenlabError(f"unknown suite {name_or_path!r}: shipped suites are {', '.join(shipped_suites())}, "
                          "or give a path to a YAML file")
    return shipped


def _lines(node) -> dict:
    """The line of every entry and of every override string in a composed YAML tree (1-based)."""
    lines: dict = {"entries": [], "data": [], "keys": {}}
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key, value in node.value:
        if key.value == "entries" and isinstance(value, yaml.SequenceNode):
            for item in value.value:
                entry = {"line": item.start_mark.line + 1, "keys": {}, "overrides": [], "samplers": {}}
                if isinstance(item, yaml.MappingNode):
                    for k, v in item.value:
                        entry["keys"][k.value] = v.start_mark.line + 1
                        if k.value == "overrides" and isinstance(v, yaml.SequenceNode):
                            entry["overrides"] = [s.start_mark.line + 1 for s in v.value]
                        if k.value == "samplers" and isinstance(v, yaml.MappingNode):
                            entry["samplers"] = {s.value: s.start_mark.line + 1 for s, _ in v.value}
                lines["entries"].append(entry)
        elif key.value == "data" and isinstance(value, yaml.SequenceNode):
            lines["data"] = [s.start_mark.line + 1 for s in value.value]
        lines["keys"][key.value] = key.start_mark.line + 1
    return lines


def _culprit_line(error: str, overrides: list[str], lines: list[int], fallback: int) -> int:
    """The line of the override an error message names (by its key), else the entry's."""
    for text, line in zip(overrides, lines):
        key = text.partition("=")[0].strip()
        if key and (f"'{key}'" in error or f"{key}=" in error or key in error.split()):
            return line
    return fallback


def _check_budget(budget) -> dict:
    if not isinstance(budget, dict) or len(budget) != 1 or next(iter(budget)) not in BUDGET_KINDS:
        raise GenlabError(f"budget must be one of {{minutes: M}}, {{images: N}} or {{steps: S}}, got {budget!r}")
    kind, amount = next(iter(budget.items()))
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) or amount <= 0:
        raise GenlabError(f"budget {kind}: must be a positive number, got {amount!r}")
    if kind != "minutes" and amount != int(amount):
        raise GenlabError(f"budget {kind}: must be a whole number, got {amount!r}")
    return {kind: float(amount) if kind == "minutes" else int(amount)}


def load_suite(name_or_path: str, seeds: list[int] | None = None, budget: dict | None = None,
               extra_data: list[str] | None = None, check_entries: bool = True) -> Suite:
    """Read and check a suite (see the module's docstring); ``seeds`` and ``budget`` replace the suite's,
    ``extra_data`` (``data.*`` overrides, e.g. the data root) is added to its ``data``. Without
    ``check_entries`` the presets are not resolved (listing suites needs no data on disk)."""
    path = suite_path(name_or_path)
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
        lines = _lines(yaml.compose(text))
    except yaml.YAMLError as e:
        raise GenlabError(f"suite {path}: not readable YAML ({e})".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise GenlabError(f"suite {path}: expected a mapping of {', '.join(SUITE_KEYS)}")
    for key in raw:
        if key not in SUITE_KEYS:
            raise GenlabError(f"suite {path}:{lines['keys'].get(key, 0)}: unknown key {key!r} (a suite has {', '.join(SUITE_KEYS)})")
    if not raw.get("entries"):
        raise GenlabError(f"suite {path}: no entries (presets to rank)")
    entries, names = [], set()
    for i, item in enumerate(raw["entries"]):
        where = lines["entries"][i] if i < len(lines["entries"]) else {"line": 0, "keys": {}, "overrides": [], "samplers": {}}
        if not isinstance(item, dict) or "preset" not in item:
            raise GenlabError(f"suite {path}:{where['line']}: an entry needs 'preset' (and may have name, overrides, samplers)")
        for key in item:
            if key not in ENTRY_KEYS:
                raise GenlabError(f"suite {path}:{where['keys'].get(key, where['line'])}: unknown entry key {key!r} "
                                  f"(an entry has {', '.join(ENTRY_KEYS)})")
        samplers = item.get("samplers") or {"": []}
        if not isinstance(samplers, dict) or not all(isinstance(v, list) for v in samplers.values()):
            raise GenlabError(f"suite {path}:{where['line']}: samplers maps a row name to a list of sampler.* settings")
        entry = Entry(preset=str(item["preset"]), name=str(item.get("name") or item["preset"]),
                      overrides=[str(o) for o in item.get("overrides") or []],
                      samplers={str(k): [str(o) for o in v] for k, v in samplers.items()}, line=where["line"])
        if entry.name in names:
            raise GenlabError(f"suite {path}:{entry.line}: two entries are named {entry.name!r}; give one a name:")
        names.add(entry.name)
        entries.append(entry)
    suite = Suite(name=path.stem, entries=entries, path=str(path),
                  **{k: raw[k] for k in SUITE_KEYS if k in raw and k != "entries"})
    suite.data = [str(o) for o in suite.data or []]
    for text in extra_data or []:
        if not text.partition("=")[0].strip().startswith("data."):
            raise GenlabError(f"{text!r}: only data.* keys may be added to a suite on the command line (the entries' "
                              "own settings are the suite's)")
        suite.data.append(text)
    suite.budget = _check_budget(budget if budget is not None else suite.budget)
    if seeds is not None:
        suite.seeds = seeds
    if not suite.seeds or len(set(suite.seeds)) != len(suite.seeds):
        raise GenlabError(f"suite {path}: seeds must be distinct integers, got {suite.seeds!r}")
    suite.metrics = parse_metrics(suite.metrics)
    for key in ("eval_n", "grid_n", "speed_n"):
        if not isinstance(getattr(suite, key), int) or getattr(suite, key) < 1:
            raise GenlabError(f"suite {path}:{lines['keys'].get(key, 0)}: {key} must be a positive integer")
    suite.splits = {"choice": "choice", "report": "report", **(suite.splits or {})}
    suite.curve = {"every": 1, "n": 500, **(suite.curve or {})}
    if suite.detectors is not None:
        if not isinstance(suite.detectors, dict) or set(suite.detectors) - {"overrides", "n"}:
            raise GenlabError(f"suite {path}:{lines['keys'].get('detectors', 0)}: detectors takes overrides (detector "
                              f"config keys) and n (images per class), got {suite.detectors!r}")
        suite.detectors = {"overrides": [str(o) for o in suite.detectors.get("overrides") or []], "n": suite.detectors.get("n")}
    if check_entries:
        check(suite, lines)
    return suite


def run_overrides(suite: Suite, entry: Entry, seed: int, batch_size: int | None = None) -> list[str]:
    """Every override of one run, in order: the suite's data, the entry's own, the budget and the
    in-training curve, the seed. An images budget becomes the steps of the entry's batch size."""
    kind, amount = suite.budget_kind, suite.budget[suite.budget_kind]
    budget = {"minutes": [f"train.max_minutes={amount}"], "steps": [f"train.max_steps={amount}"],
              "images": [f"train.max_steps={math.ceil(amount / batch_size)}"] if batch_size else []}[kind]
    every = int(suite.curve.get("every") or 0)
    curve = ([f"eval.every={every}", f"eval.n={int(suite.curve.get('n', 500))}", f"eval.metrics={json.dumps(suite.metrics)}"]
             if every else ["eval.every=0"])
    return [*suite.data, *entry.overrides, *BUDGET_FREE, *budget, *curve, f"train.seed={seed}"]


def resolve_entry(suite: Suite, entry: Entry, seed: int) -> tuple[Config, list[str]]:
    """An entry's resolved config for ``seed`` and the overrides that give it."""
    overrides = run_overrides(suite, entry, seed)
    cfg = load_config(entry.preset, overrides)
    if suite.budget_kind == "images":
        overrides = run_overrides(suite, entry, seed, cfg.train.batch_size)
        cfg = load_config(entry.preset, overrides)
    return cfg, overrides


def check(suite: Suite, lines: dict | None = None) -> None:
    """Resolve every entry (and its samplers, and the detectors' keys) now, so a bad preset, key or
    value is refused naming its line before anything runs; and refuse entries that would not see the
    same data."""
    lines = lines or {"entries": [], "data": [], "keys": {}}
    if suite.detectors is not None:
        try:
            load_config("detector", [*suite.data, *suite.detectors["overrides"]])
        except GenlabError as e:
            raise GenlabError(f"suite {suite.path}:{lines['keys'].get('detectors', 0)}: detectors: {e}") from None
    shared = None
    for i, entry in enumerate(suite.entries):
        where = lines["entries"][i] if i < len(lines["entries"]) else {"line": entry.line, "overrides": [], "samplers": {}}
        try:
            cfg, _ = resolve_entry(suite, entry, suite.seeds[0])
        except GenlabError as e:
            line = _culprit_line(str(e), suite.data + entry.overrides, lines.get("data", []) + where["overrides"],
                                 where["keys"].get("preset", entry.line) if "keys" in where else entry.line)
            raise GenlabError(f"suite {suite.path}:{line}: entry {entry.name!r}: {e}") from None
        for row, settings in entry.samplers.items():
            try:
                with_evaluation_overrides(cfg, settings)
            except GenlabError as e:
                raise GenlabError(f"suite {suite.path}:{where['samplers'].get(row, entry.line)}: entry {entry.name!r}, "
                                  f"sampler {row!r}: {e}") from None
        data = {k: getattr(cfg.data, k) for k in SHARED_DATA_KEYS}
        if shared is None:
            shared = (entry, data)
        elif data != shared[1]:
            differ = [k for k in SHARED_DATA_KEYS if data[k] != shared[1][k]]
            shown = ", ".join(f"data.{k} {shared[1][k]!r} vs {data[k]!r}" for k in differ)
            raise GenlabError(f"suite {suite.path}:{entry.line}: entry {entry.name!r} does not share the data of entry "
                              f"{shared[0].name!r} ({shown}); set them in the suite's data: list")
