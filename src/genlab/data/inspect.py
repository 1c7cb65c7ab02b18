"""What `genlab data info` reports about a source, as data (``inspect_source``) and as text
(``format_info``): counts per split, image sizes and modes of a sample of files, labels, the output
settings and the state of the cache.

The split counts are those `prepare` will write: unusable files (corrupt, truncated, not an image,
smaller than the crop) are found by the same per-file check and left out. When the cache is ready
its own counts are used; otherwise every file is checked (in parallel, without keeping pixels)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from genlab.config import DataConfig
from genlab.data.cache import CACHE_FORMAT, cache_path, decode_all, list_catalog, read_meta
from genlab.data.splits import SPLITS, assign_splits, carved_note

SAMPLED_FILES = 50  # files decoded to report sizes and modes, spread over the listing


def inspect_source(cfg: DataConfig) -> dict[str, Any]:
    catalog = list_catalog(cfg)
    splits = assign_splits(catalog, cfg)
    path = cache_path(cfg, catalog)
    meta = read_meta(path)
    if meta is not None and meta.get("format") == CACHE_FORMAT:
        counts, unusable = dict(meta["counts"]), list(meta["skipped"])
    else:
        _, failed = decode_all(catalog, cfg, keep=False)
        bad = {i for i, _ in failed}
        counts = {s: sum(1 for i in splits[s].tolist() if i not in bad) for s in SPLITS}
        unusable = [[catalog.keys[i], reason] for i, reason in failed]
    scheme = "official" if cfg.split == "official" or (cfg.split == "auto" and catalog.has_official_split) else "random"
    seeded = scheme == "random" or catalog.official.count("val") == 0
    sizes: Counter = Counter()
    modes: Counter = Counter()
    failed = 0
    step = max(1, len(catalog) // SAMPLED_FILES)
    for i in range(0, len(catalog), step):
        try:
            raw = catalog.decode(i)
        except Exception:
            failed += 1
            continue
        if hasattr(raw, "mode"):
            sizes[f"{raw.size[0]}x{raw.size[1]}"] += 1
            modes[raw.mode] += 1
        else:
            sizes[f"{raw.shape[1]}x{raw.shape[0]}"] += 1
            modes["L" if raw.ndim == 2 else "RGB"] += 1
    own_test = "test" in catalog.official if scheme == "official" else cfg.test_fraction > 0
    carved = carved_note(cfg) if counts.get("test") and not own_test else None
    return {
        "source": cfg.source, "root": cfg.root, "items": len(catalog), "notes": list(catalog.notes), "carved": carved,
        "splits": counts, "unusable": unusable, "scheme": scheme, "split_seed": cfg.split_seed if seeded else None,
        "parts": cfg.num_parts, "part": cfg.part, "sizes": sizes.most_common(3), "modes": modes.most_common(),
        "unreadable_sampled": failed, "sampled": sum(sizes.values()) + failed,
        "classes": len(set(catalog.labels)) if catalog.labels is not None else None,
        "class_names": list(catalog.label_names), "attributes": len(catalog.attribute_names) if catalog.attributes is not None else None,
        "output": {"size": cfg.size, "channels": cfg.channels, "crop": cfg.crop, "filter": cfg.resize_filter},
        "cache": {"path": str(path), "meta": meta},
    }


def format_info(info: dict[str, Any]) -> str:
    lines = [f"source   {info['source']}" + (f" ({info['root']})" if info["root"] else ""), f"items    {info['items']}"]
    lines += [f"note     {note}" for note in info["notes"]]
    seed = f", seed {info['split_seed']}" if info["split_seed"] is not None else ""
    lines.append(f"splits   {', '.join(f'{s} {n}' for s, n in info['splits'].items())} ({info['scheme']}{seed})")
    lines.append("roles    val is the choice split (early stopping, best.pt, a sweep's best), test the report split "
                 "(genlab eval's default)" if info["splits"].get("test") else
                 "roles    no test split: genlab eval reports on the split choices are made on (hold images out with "
                 "data.val_fraction)")
    if info.get("carved"):
        lines.append(f"report   test split carved out: {info['carved']}")
    if info["unusable"]:
        first, reason = info["unusable"][0]
        lines.append(f"unusable {len(info['unusable'])} files left out of the splits, as prepare does (first: {first}: {reason})")
    if info["parts"] > 1:
        lines.append(f"parts    train cut into {info['parts']} equal parts of {info['splits']['train'] // info['parts']}; "
                     f"using part {info['part']}")
    unreadable = f"; {info['unreadable_sampled']} unreadable" if info["unreadable_sampled"] else ""
    lines.append(f"images   {', '.join(f'{k} ({v})' for k, v in info['sizes'])}; modes "
                 f"{', '.join(f'{k} ({v})' for k, v in info['modes'])}{unreadable} - of {info['sampled']} sampled")
    if info["classes"] is not None:
        names = info["class_names"]
        lines.append(f"labels   {info['classes']} classes" + (f": {', '.join(names)}" if 0 < len(names) <= 10 else ""))
    if info["attributes"] is not None:
        lines.append(f"attrs    {info['attributes']} attributes")
    out = info["output"]
    lines.append(f"output   {out['size']}x{out['size']}, {out['channels']} channel(s), crop "
                 f"{out['crop'] or 'largest centred square'}, filter {out['filter']}")
    meta, path = info["cache"]["meta"], info["cache"]["path"]
    if meta is None:
        lines.append(f"cache    not prepared (would be {path})")
    elif meta.get("format") != CACHE_FORMAT:
        lines.append(f"cache    {path} is of another format ({meta.get('format')}); it will be rebuilt")
    else:
        lines.append(f"cache    ready at {path} ({', '.join(f'{k} {v}' for k, v in meta['counts'].items())}; "
                     f"{len(meta['skipped'])} skipped; prepared in {meta['prepare_seconds']} s)")
    return "\n".join(lines)
