"""`genlab data info | prepare | download`."""

from __future__ import annotations

from pathlib import Path

from genlab.cli.common import COMMANDS, FORMAT, add_common
from genlab.config import apply_overrides, load_preset
from genlab.data import SOURCES, prepare
from genlab.data.cache import read_meta
from genlab.data.download import DOWNLOADS
from genlab.data.inspect import format_info, inspect_source
from genlab.resolve import resolve_config

DATA_EXAMPLES = """\
examples:
  genlab data info celeba --root ../shared/data/celeba
  genlab data prepare celeba --root ../shared/data/celeba size=64 crop=148
  genlab data prepare folder --root ../shared/data/ckplus48 size=64 channels=1 --strict
  genlab data prepare vae-celeba64-seed002 --root ../shared/data/celeba
  genlab data download cifar10 --root ~/data

SOURCE is a data source (digits, folder, celeba, cifar10) or a preset, whose data section is used.
key=value sets data keys (size=64 or data.size=64); `genlab train` prepares what it needs itself.
"""



def add_parsers(sub) -> None:
    fmt = FORMAT
    p = sub.add_parser("data", help=COMMANDS["data"][1],
                       description="Inspect, prepare (decode once into the cache) and download data sets.",
                       epilog=DATA_EXAMPLES, formatter_class=fmt)
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for action, text in (("info", "counts per split, image size and mode, cache state"),
                         ("prepare", "decode every image once into the cache")):
        q = data_sub.add_parser(action, help=text, description=text, epilog=DATA_EXAMPLES, formatter_class=fmt)
        q.add_argument("source", metavar="SOURCE", help="digits | folder | celeba | cifar10, or a preset name")
        q.add_argument("overrides", nargs="*", metavar="key=value", help="data keys, e.g. size=64 crop=148")
        q.add_argument("--root", help="the data set's folder (sets data.root)")
        q.add_argument("--strict", action="store_true", help="unusable images are an error instead of skipped")
        if action == "prepare":
            q.add_argument("--force", action="store_true", help="rebuild the cache even if it exists")
        add_common(q, device=False)
    q = data_sub.add_parser("download", help="download a data set from its official source",
                            description="Download a data set from its official source and verify checksums.",
                            epilog=DATA_EXAMPLES, formatter_class=fmt)
    q.add_argument("dataset", choices=sorted(DOWNLOADS))
    q.add_argument("--root", type=Path, required=True, help="folder to download into")
    add_common(q, device=False)


def data_config(args):
    """DataConfig from SOURCE (a source or a preset), --root, --strict and data key=value overrides."""
    if args.source in SOURCES:
        raw = {"data": {"source": args.source}}
    else:
        raw = load_preset(args.source)
        raw = {"data": dict(raw.get("data") or {})}
    overrides = [o if o.startswith("data.") else f"data.{o}" for o in args.overrides]
    if args.root is not None:
        overrides.append(f"data.root={args.root}")
    if args.strict:
        overrides.append("data.strict=true")
    return resolve_config(apply_overrides(raw, overrides)).data


def cmd_data(args) -> int:
    if args.data_command == "download":
        path = DOWNLOADS[args.dataset](args.root.expanduser())
        print(f"{args.dataset} is ready in {path}")
        return 0
    cfg = data_config(args)
    if args.data_command == "prepare":
        path = prepare(cfg, force=args.force)
        meta = read_meta(path)
        counts = ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
        print(f"{meta['name']}: {counts}; {len(meta['skipped'])} skipped; cache {path}")
        return 0
    print(format_info(inspect_source(cfg)))
    return 0

