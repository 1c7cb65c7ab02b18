"""`genlab report`, `genlab sweep` and `genlab bench`: runs side by side."""

from __future__ import annotations

from pathlib import Path

from genlab import bench, sweep
from genlab.cli.common import COMMANDS, FORMAT, add_common, positive
from genlab.errors import GenlabError
from genlab.metrics.spread import format_interval
from genlab.report import write_report
from genlab.sweep.runners import LocalRunner, RayRunner

REPORT_EXAMPLES = """\
examples:
  genlab report runs/00000-quickstart-digits --out quickstart.html
  genlab report runs/00003-vae-celeba64-seed002-celeba runs/00004-dcgan-celeba64-celeba --out vae-vs-gan.html
  genlab report sweeps/vae-kl-seed004 --out kl-sweep.html
  genlab report detect-matrix --out detectors.html

The page is one file: images are embedded, nothing is fetched; open it in any browser.
"""

SWEEP_EXAMPLES = """\
examples:
  genlab sweep vae-ck-seed001 data.root=../shared/data/ckplus48 --grid model.kl_weight=0.001,0.01,0.1 --seeds 0,1,2 --parallel 2
  genlab sweep vae-cifar10-seed003 data.root=../shared/data/cifar10-jpeg --grid model.latent_dim=10,128,512,2048
  genlab sweep vae-kl-seed001 data.root=../shared/data/ckplus48          a shipped sweep (genlab sweep --list)
  genlab sweep --resume sweeps/vae-kl-seed001 --parallel 2
  genlab sweep dcgan-celeba64 data.root=... --grid model.latent_dim=10,100,2000 --runner ray --gpus-per-run 1

Each run is an ordinary run directory (SWEEP/runs/POINT-seedK); after training it is evaluated
(--metrics, default swd). The sweep writes sweep.json, results.json, sweep.png and report.html.
"""



BENCH_EXAMPLES = """\
examples:
  genlab bench --list                                         the shipped suites
  genlab bench celeba32-cpu data.root=../shared/data/celeba --seeds 0 --parallel 2
  genlab bench celeba32-cpu data.root=... --seeds 0,1,2 --budget-minutes 7 --out benches/celeba32
  genlab bench my-suite.yaml --budget-images 40960 --runner ray --gpus-per-run 1
  genlab bench --resume benches/celeba32 --parallel 2          finish the runs a kill left unscored
  genlab bench --resume benches/celeba32 --seeds 0,1,2          add seeds to a finished bench

Every run is an ordinary run directory (DIR/runs/ENTRY-seedK) trained to the suite's budget (equal
minutes, images or steps), then scored on the choice and report splits with its sampling cost.
The bench writes bench.json, results.json (leaderboards: mean and 95% t-interval over seeds, ranks
with ties), the charts and report.html. key=value arguments are added to every entry (data.root=).
"""


def add_parsers(sub) -> None:
    fmt = FORMAT
    p = sub.add_parser("report", help=COMMANDS["report"][1],
                       description="Write one self-contained HTML report (images embedded) for runs side by side, "
                                   "sweeps and detector matrices.", epilog=REPORT_EXAMPLES, formatter_class=fmt)
    p.add_argument("paths", nargs="+", type=Path, metavar="RUN_DIR|SWEEP_DIR|MATRIX_DIR")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file (default: report.html)")
    p.add_argument("--title", default=None)
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    add_common(p, device=False)

    p = sub.add_parser("sweep", help=COMMANDS["sweep"][1],
                       description="Run a grid of ordinary runs under one sweep folder, then chart each metric against "
                                   "each swept key with the spread over seeds.", epilog=SWEEP_EXAMPLES, formatter_class=fmt)
    p.add_argument("preset", nargs="?", help="a preset, or a shipped sweep (see the list below)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every run")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a swept key and its values (repeatable)")
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (default: 0, or the shipped sweep's)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (local runner; default 1)")
    p.add_argument("--out", type=Path, default=None, help="the sweep folder (default: sweeps/NAME)")
    p.add_argument("--resume", type=Path, metavar="SWEEP_DIR", help="continue a sweep: keep finished runs, resume the rest")
    p.add_argument("--metrics", default=None, help="evaluated after each run (default: swd, weight-free)")
    p.add_argument("--eval-n", type=int, default=None, help="samples per evaluation (default 2000)")
    p.add_argument("--runner", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", default="auto", help="the Ray cluster ('auto': the one this machine is in; 'local': "
                                                         "start a single-node instance here)")
    p.add_argument("--gpus-per-run", type=float, default=0, help="Ray: GPUs each run requests")
    p.add_argument("--cpus-per-run", type=float, default=1, help="Ray: CPUs each run requests")
    p.add_argument("--list", action="store_true", help="list the shipped sweeps")
    add_common(p)

    p = sub.add_parser("bench", help=COMMANDS["bench"][1],
                       description="Train every entry of a suite at the same compute on the same data, score each "
                                   "under one protocol over seeds, and rank them on one page.", epilog=BENCH_EXAMPLES,
                       formatter_class=fmt)
    p.add_argument("suite", nargs="?", help="a shipped suite (--list) or a suite YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="data keys added to the suite's (data.root=...)")
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the suite's)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-minutes", type=float, default=None, help="training wall time per run, in minutes")
    budget.add_argument("--budget-images", type=int, default=None, help="training images seen per run")
    budget.add_argument("--budget-steps", type=int, default=None, help="optimiser steps per run")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (local runner; default 1)")
    p.add_argument("--out", type=Path, default=None, help="the bench folder (default: benches/SUITE)")
    p.add_argument("--resume", type=Path, metavar="BENCH_DIR", help="finish a bench: keep scored runs, resume the rest")
    p.add_argument("--runner", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", default="auto", help="the Ray cluster ('auto', or 'local' for a single-node instance)")
    p.add_argument("--gpus-per-run", type=float, default=0, help="Ray: GPUs each run requests")
    p.add_argument("--cpus-per-run", type=float, default=1, help="Ray: CPUs each run requests")
    p.add_argument("--list", action="store_true", help="list the shipped suites")
    add_common(p)


def cmd_report(args) -> int:
    out = write_report(args.paths, args.out, args.force, args.title)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); open it in a browser")
    return 0



def cmd_sweep(args) -> int:
    if args.list:
        for name in sweep.sweep_presets():
            spec = sweep.load_sweep_preset(name)
            print(f"{name:<24} {spec.preset:<24} {spec.description}")
        return 0
    runner = _runner(args)
    if args.resume is not None:
        if args.preset or args.grid or args.overrides:
            raise GenlabError("--resume SWEEP_DIR continues a sweep as it was planned: give no preset, --grid or overrides")
        folder = args.resume
        results = sweep.execute(folder, runner)
    else:
        if args.preset is None:
            raise GenlabError("name a preset or a shipped sweep (genlab sweep --list), or --resume SWEEP_DIR")
        if args.preset in sweep.sweep_presets():
            spec = sweep.load_sweep_preset(args.preset)
            spec.overrides = spec.overrides + list(args.overrides)
            spec.grid.update(sweep.parse_grid(args.grid))
        else:
            spec = sweep.SweepSpec(preset=args.preset, grid=sweep.parse_grid(args.grid), overrides=list(args.overrides),
                                   name=args.preset)
        if args.seeds is not None:
            spec.seeds = sweep.parse_seeds(args.seeds)
        if args.metrics is not None:
            spec.metrics = [m for m in args.metrics.split(",") if m.strip()]
        if args.eval_n is not None:
            positive("--eval-n", args.eval_n)
            spec.eval_n = args.eval_n
        folder = args.out or Path("sweeps") / spec.name
        results = sweep.start(spec, folder, runner, args.device)
    report = write_report([folder], folder / "report.html", force=True)
    print(f"{results['finished']} of {results['total']} runs finished")
    print(f"report split, {results['interval']}; chosen on the choice split:")
    for point in results["points"]:
        shown = ", ".join(f"{m} {format_interval(s)}" + _mark(results, m, point["label"]) for m, s in point["stats"].items())
        print(f"  {point['label']:<40} {shown or '(no numbers)'}")
    print(f"wrote {folder / 'results.json'}, {folder / 'sweep.png'} and {report}")
    return 0 if results["finished"] == results["total"] else 1


def _runner(args):
    if args.runner == "ray":
        return RayRunner(None if args.ray_address == "local" else args.ray_address, args.gpus_per_run, args.cpus_per_run)
    return LocalRunner(args.parallel)


def cmd_bench(args) -> int:
    if args.list:
        for name in bench.shipped_suites():
            suite = bench.load_suite(name, check_entries=False)
            print(f"{name:<20} {len(suite.entries):>2} entries  {suite.describe_budget()}: {suite.description}")
        return 0
    if args.resume is not None:
        if args.suite or args.overrides or _budget(args):
            raise GenlabError("--resume BENCH_DIR finishes a bench as it was planned (--seeds may add seeds): give no "
                              "suite, budget or overrides")
        bench.read_manifest(args.resume)  # (refuses a folder that is not a bench before a runner starts)
        if args.seeds is not None:
            bench.add_seeds(args.resume, sweep.parse_seeds(args.seeds))
        folder, results = args.resume, bench.execute(args.resume, _runner(args))
    else:
        if args.suite is None:
            raise GenlabError("name a suite (genlab bench --list) or a suite YAML file, or --resume BENCH_DIR")
        seeds = sweep.parse_seeds(args.seeds) if args.seeds is not None else None
        suite = bench.load_suite(args.suite, seeds=seeds, budget=_budget(args), extra_data=list(args.overrides))
        folder = args.out or Path("benches") / suite.name
        results = bench.start(suite, folder, _runner(args), args.device, bench.command_line(args.argv))
    report = write_report([folder], Path(folder) / "report.html", force=True, title=f"genlab bench: suite {results['suite']}")
    print(f"{results['finished']} of {results['total']} runs finished; report split, {results['interval']}")
    for metric, board in results["leaderboards"].items():
        print(f"{metric} ({'higher' if board['higher_is_better'] else 'lower'} is better):")
        for r in board["rows"]:
            shown = format_interval(r) if "mean" in r else r["status"]
            print(f"  {r['rank'] if r['rank'] is not None else '-':>3}  {r['row']:<32} {shown}")
    for failed in results["failed"]:
        print(f"  {failed['run']}: {failed['status']}")
    print(f"wrote {Path(folder) / 'results.json'} and {report}")
    return 0 if results["finished"] == results["total"] and not results["failed"] else 1


def _budget(args) -> dict | None:
    if args.budget_minutes is not None:
        return {"minutes": args.budget_minutes}
    if args.budget_images is not None:
        return {"images": args.budget_images}
    if args.budget_steps is not None:
        return {"steps": args.budget_steps}
    return None


def _mark(results: dict, metric: str, label: str) -> str:
    mark = (results["selection"].get(metric) or {}).get("marks", {}).get(label)
    return f" [{mark}]" if mark else ""
