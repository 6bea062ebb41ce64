"""``gauntlet``: the command line.

Exit codes: 0 success; 1 some jobs failed (their errors are printed; every finished
result is kept); 2 bad input (a manifest, an option or a data folder), reported as
``file: field: reason`` without a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# OpenMP's default spin-waiting makes torch many times slower on small batches whenever
# the cores are shared; it must be set before torch is imported (workers inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from benchmark.report import add_parser as add_report_parser
from benchmark.report import cmd_report

EXIT_OK, EXIT_JOBS_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gauntlet", description="Adaptive-attack robustness benchmark and leaderboard.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="attack (and certify) every defense, write results, build the site")
    r.add_argument("--submissions", type=Path, default=Path("submissions"), help="folder of submission folders")
    r.add_argument("--defense", action="append", default=[], help="defense id (repeatable; default: all)")
    r.add_argument("--attack", action="append", default=[], help="attack id (repeatable; default: all)")
    r.add_argument("--threat", action="append", default=[], help="threat id (repeatable; default: linf-0.031 and l2-0.005)")
    r.add_argument("--profile", default="quick", help="run profile: quick (default) or full")
    r.add_argument("--n-examples", type=int, default=None, help="examples per dataset (default: the profile's)")
    r.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    r.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    r.add_argument("--results", type=Path, default=Path("results"), help="result folder (default results/)")
    r.add_argument("--site", type=Path, default=Path("site"), help="site folder (default site/)")
    r.add_argument("--data-dir", type=Path, default=None, help="dataset folder (default $GAUNTLET_DATA)")
    r.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    r.add_argument("--batch-size", type=int, default=100, help="examples per attack batch (default 100)")
    r.add_argument("--no-sweep", action="store_true", help="skip the accuracy-versus-ε sweeps")
    r.add_argument("--no-certify", action="store_true", help="skip certification")
    r.add_argument("--no-cascade", action="store_true",
                   help="run every attack on every example (default: after the baselines, each attack "
                        "only on the examples still robust; same per-example worst case, less work)")
    r.add_argument("--no-site", action="store_true", help="do not build the leaderboard")
    r.add_argument("--no-isolation", action="store_true",
                   help="run jobs in this process (debugging; no time or memory limits)")
    r.add_argument("--job-timeout", type=float, default=None, help="wall-clock limit per job, s (default: the profile's)")
    r.add_argument("--job-memory", type=int, default=None, help="memory limit per job, MiB (default: the profile's)")
    r.add_argument("--workers", type=int, default=None,
                   help="submissions attacked at once (default: one per CPU core on CPU, 1 on CUDA)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")

    v = sub.add_parser("validate", help="check manifests and weights; exit 2 on any problem")
    v.add_argument("paths", nargs="*", type=Path, help="manifests or submission folders (default: submissions/)")

    sub.add_parser("list", help="list defenses, attacks, threat models and datasets").add_argument(
        "--submissions", type=Path, default=Path("submissions"))

    t = sub.add_parser("train", help="train a submission from its manifest's recipe")
    t.add_argument("id", help="submission id")
    t.add_argument("--submissions", type=Path, default=Path("submissions"))
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-dir", type=Path, default=None)

    lb = sub.add_parser("leaderboard", help="render the static site from result files")
    lb.add_argument("--results", type=Path, default=Path("results"))
    lb.add_argument("--site", type=Path, default=Path("site"))
    lb.add_argument("--submissions", type=Path, default=Path("submissions"))

    sub.add_parser("schema", help="print the manifest JSON Schema for submitters")
    add_report_parser(sub)
    return p


def _bad(lines: list[str] | str) -> int:
    for line in [lines] if isinstance(lines, str) else lines:
        print(f"error: {line}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_validate(args: argparse.Namespace) -> int:
    from benchmark.manifest import ManifestError
    from benchmark.registry import manifest_paths, validate

    try:
        paths = manifest_paths(args.paths or [Path("submissions")])
    except ManifestError as e:
        return _bad(e.problems)
    if not paths:
        return _bad(f"{', '.join(map(str, args.paths or ['submissions']))}: (path): no manifest.yaml found")
    subs, problems = validate(paths)
    if problems:
        return _bad(problems)
    for s in subs:
        print(f"ok  {s.path}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from attacks.registry import attack_ids, make_attack
    from benchmark.datasets import DATASETS
    from benchmark.registry import manifest_paths, validate
    from benchmark.threats import FIXED_THREATS, get_threat

    subs, problems = validate(manifest_paths([args.submissions]), check_weights=False)
    print("defenses:")
    for s in subs:
        print(f"  {s.id:32s} {s.manifest.dataset:16s} {s.manifest.name}")
    for p in problems:
        print(f"  (invalid) {p}")
    print("attacks:")
    for a in attack_ids():
        att = make_attack(a)
        print(f"  {a:16s} {att.summary}")
    print("threat models:")
    for t in FIXED_THREATS:
        th = get_threat(t)
        radii = ", ".join(f"{d}: {th.radius(ds.dim):.4g}" for d, ds in DATASETS.items())
        print(f"  {t:16s} raw radius {radii}")
    print("datasets:")
    for d, ds in DATASETS.items():
        print(f"  {d:16s} {ds.description}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from benchmark.manifest import ManifestError
    from benchmark.registry import load_submission, semantic_problems
    from benchmark.runner import resolve_device
    from benchmark.training import train_submission

    path = args.submissions / args.id / "manifest.yaml"
    if not path.is_file():
        return _bad(f"{path}: (path): no such submission")
    try:
        sub = load_submission(path)
    except ManifestError as e:
        return _bad(e.problems)
    # Training writes the weights and their sha256: a new submission has neither yet.
    problems = [p for p in semantic_problems(sub, check_weights=False)
                if ".weights:" not in p and "model.sha256:" not in p]
    if problems:
        return _bad(problems)
    try:
        device = str(resolve_device(args.device))
        _, seconds = train_submission(sub, submissions_dir=args.submissions, data_dir=args.data_dir,
                                      device=device, seed=args.seed)
    except ValueError as e:
        return _bad(str(e))
    print(f"trained {sub.id} in {seconds:.1f} s; weights and sha256 written to {sub.path}")
    return EXIT_OK


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmark.results import ResultError
    from leaderboard.site import build_site

    if not args.results.is_dir():
        return _bad(f"{args.results}: (path): no result folder; run 'gauntlet run' first")
    try:
        index = build_site(args.results, args.site, args.submissions)
    except ResultError as e:
        return _bad(str(e))
    print(f"site written: {index}")
    return EXIT_OK


def _summary_table(results_dir: Path, threats: tuple[str, ...]) -> str:
    from benchmark.results import iter_results
    import pandas as pd

    from benchmark.flags import worst_case_accuracy

    rows: dict[tuple, dict] = {}
    groups: dict[tuple, list] = {}
    for _, rec in iter_results(results_dir):
        if rec["kind"] != "attack" or rec["threat"]["id"] not in threats:
            continue
        key = (rec["dataset"]["id"], rec["threat"]["id"], rec["defense"]["id"])
        row = rows.setdefault(key, {"clean": rec["summary"]["clean_accuracy"]})
        row[rec["attack"]["id"]] = rec["summary"]["robust_accuracy"]
        groups.setdefault(key, []).append(rec)
    if not rows:
        return "(no results)"
    for key, recs in groups.items():
        rows[key]["worst"] = worst_case_accuracy(recs)
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.names = ["dataset", "threat", "defense"]
    cols = ["clean", "worst"] + [c for c in df.columns if c not in ("clean", "worst")]
    return df[cols].sort_values(["dataset", "threat", "worst"], ascending=[True, True, False]).to_string(
        float_format=lambda v: f"{v:.3f}", na_rep="-")


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.datasets import DatasetError
    from benchmark.manifest import ManifestError
    from benchmark.runner import RunConfig, run
    from benchmark.threats import FIXED_THREATS, get_threat

    try:
        for t in args.threat:
            get_threat(t)
        cfg = RunConfig(submissions_dir=args.submissions, defenses=tuple(args.defense),
                        attacks=tuple(args.attack), threats=tuple(args.threat) or FIXED_THREATS,
                        profile=args.profile, n_examples=args.n_examples, device=args.device,
                        seed=args.seed, results_dir=args.results, data_dir=args.data_dir,
                        batch_size=args.batch_size, download=args.download, sweep=False if args.no_sweep else None,
                        certify=not args.no_certify, isolate=not args.no_isolation,
                        job_timeout_s=args.job_timeout, job_memory_mb=args.job_memory, workers=args.workers,
                        cascade=not args.no_cascade)
        summary = run(cfg, progress=not args.quiet)
    except ManifestError as e:
        return _bad(e.problems)
    except (KeyError, ValueError, DatasetError) as e:
        return _bad(str(e.args[0]) if e.args else str(e))
    for line in summary.unavailable:
        print(line, file=sys.stderr)
    print(f"{len(summary.written)} result files written, {len(summary.skipped)} reused (resume) in {args.results}")
    print(_summary_table(args.results, cfg.threats))
    if cfg.cascade:
        print("worst = per-example worst case over every attack; an attack column counts the examples the "
              "cascade did not hand it (broken by an earlier attack) as broken")
    for err in summary.errors:
        print(f"job failed: {err}", file=sys.stderr)
    if not args.no_site:
        code = cmd_leaderboard(argparse.Namespace(results=args.results, site=args.site,
                                                  submissions=args.submissions))
        if code:
            return code
    return EXIT_JOBS_FAILED if summary.errors else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gauntlet`` console script."""
    args = _parser().parse_args(argv)
    handlers = {"run": cmd_run, "validate": cmd_validate, "list": cmd_list, "train": cmd_train,
                "leaderboard": cmd_leaderboard, "report": cmd_report,
                "schema": lambda a: print(json.dumps(_schema(), indent=2)) or EXIT_OK}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: finished result files are kept; run again to resume", file=sys.stderr)
        return 130


def _schema() -> dict:
    from benchmark.manifest import json_schema

    return json_schema()


if __name__ == "__main__":
    sys.exit(main())
