"""``gauntlet``: the command line.

Exit codes:

* 0: success.
* 1: some jobs failed (their errors are printed; every finished result is kept). For
  ``gauntlet train``, the submission's model or recipe raised something other than
  ``ValueError`` (a failed training job). Also an internal error: one line
  ``error: internal error: <Type>: <message> (...)``; ``GAUNTLET_DEBUG=1`` re-raises it
  with its traceback.
* 2: bad input, checked before any work: a manifest, an option (including a recipe or
  factory refusing its manifest arguments with ``ValueError``), a data folder, a
  ``--submissions`` folder that is missing or holds no manifest, a ``--results``/``--site``
  folder that cannot be created and written, or a ``--site`` whose rebuild would delete
  what it did not write (it overlaps the results, or is not a site). Reported as one
  line per problem, ``error: <file or --option>: <reason>``, without a traceback.
  argparse's own errors (unknown option, ``invalid int value``) are one such line too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

# OpenMP's default spin-waiting makes torch many times slower on small batches whenever
# the cores are shared; it must be set before torch is imported (workers inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from gauntlet.benchmark.report import add_parser as add_report_parser
from gauntlet.benchmark.report import cmd_report

EXIT_OK, EXIT_JOBS_FAILED, EXIT_BAD_INPUT = 0, 1, 2
#: RunConfig fields whose command-line option is not ``--`` + the field with dashes.
_OPTIONS = {"submissions_dir": "--submissions", "results_dir": "--results", "data_dir": "--data-dir",
            "defenses": "--defense", "attacks": "--attack", "threats": "--threat",
            "job_timeout_s": "--job-timeout", "job_memory_mb": "--job-memory", "isolate": "--no-isolation",
            "sandbox": "--unsafe-no-sandbox",
            "sweep": "--no-sweep", "certify": "--no-certify", "cascade": "--no-cascade"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``error: --option: reason`` (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message.removeprefix('argument ')} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _path(text: str) -> Path:
    """argparse type: a non-empty path (``Path("")`` would silently be the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gauntlet", description="Adaptive-attack robustness benchmark and leaderboard.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="attack (and certify) every defense, write results, build the site")
    r.add_argument("--submissions", type=_path, default=Path("submissions"), help="folder of submission folders")
    r.add_argument("--defense", action="append", default=[], help="defense id (repeatable; default: all)")
    r.add_argument("--attack", action="append", default=[], help="attack id (repeatable; default: all)")
    r.add_argument("--threat", action="append", default=[], help="threat id (repeatable; default: linf-0.031 and l2-0.005)")
    r.add_argument("--profile", default="quick", help="run profile: quick (default) or full")
    r.add_argument("--n-examples", type=int, default=None, help="examples per dataset (default: the profile's)")
    r.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    r.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    r.add_argument("--results", type=_path, default=Path("results"), help="result folder (default results/)")
    r.add_argument("--site", type=_path, default=Path("site"), help="site folder (default site/)")
    r.add_argument("--data-dir", type=_path, default=None, help="dataset folder (default $GAUNTLET_DATA)")
    r.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    r.add_argument("--batch-size", type=int, default=100, help="examples per attack batch (default 100)")
    r.add_argument("--no-sweep", action="store_true", help="skip the accuracy-versus-ε sweeps")
    r.add_argument("--no-certify", action="store_true", help="skip certification")
    r.add_argument("--no-cascade", action="store_true",
                   help="run every attack on every example (default: after the baselines, each attack "
                        "only on the examples still robust; same per-example worst case, less work)")
    r.add_argument("--no-site", action="store_true", help="do not build the leaderboard")
    r.add_argument("--no-isolation", action="store_true",
                   help="run jobs in this process (debugging; no time or memory limits); "
                        "same as --executor in-process")
    r.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="run submitted code without bubblewrap, with your own privileges (only for "
                        "code you trust, e.g. your own defense; results are recorded as unsandboxed)")
    r.add_argument("--executor", choices=("local", "in-process", "ray"), default=None,
                   help="where jobs run: local worker processes with limits (default), in-process, or ray")
    r.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join (with --executor ray; default: start a local one)")
    r.add_argument("--job-timeout", type=float, default=None, help="wall-clock limit per job, s (default: the profile's)")
    r.add_argument("--job-memory", type=int, default=None, help="memory limit per job, MiB (default: the profile's)")
    r.add_argument("--workers", type=int, default=None,
                   help="submissions attacked at once (default: one per CPU core on CPU, 1 on CUDA)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")

    v = sub.add_parser("validate", help="check manifests and weights; exit 2 on any problem")
    v.add_argument("paths", nargs="*", type=_path, help="manifests or submission folders (default: submissions/)")

    sub.add_parser("list", help="list defenses, attacks, threat models and datasets").add_argument(
        "--submissions", type=_path, default=Path("submissions"))

    t = sub.add_parser("train", help="train a submission from its manifest's recipe")
    t.add_argument("id", help="submission id")
    t.add_argument("--submissions", type=_path, default=Path("submissions"))
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-dir", type=_path, default=None)
    t.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="train without bubblewrap, with your own privileges (code you trust)")

    lb = sub.add_parser("leaderboard", help="render the static site from result files")
    lb.add_argument("--results", type=_path, default=Path("results"))
    lb.add_argument("--site", type=_path, default=Path("site"))
    lb.add_argument("--submissions", type=_path, default=Path("submissions"))

    sub.add_parser("schema", help="print the manifest JSON Schema for submitters")
    add_report_parser(sub)
    return p


def _bad(lines: list[str] | str, code: int = EXIT_BAD_INPUT) -> int:
    """Print each problem as one ``error:`` line (newlines inside one are folded)."""
    for line in [lines] if isinstance(lines, str) else lines:
        print(f"error: {' '.join(str(line).split())}", file=sys.stderr)
    return code


def _message(e: Exception) -> str:
    """An exception's message (a KeyError's without the quotes ``str`` adds)."""
    return str(e.args[0]) if e.args else type(e).__name__


def _config_problem(e: Exception) -> str:
    """A :class:`gauntlet.benchmark.config.ConfigError` as ``--option: reason``."""
    field = getattr(e, "field", None)
    if field is None:
        return str(e)
    return f"{_OPTIONS.get(field, '--' + field.replace('_', '-'))}: {e.reason}"


def _writable(option: str, folder: Path) -> str | None:
    """None when ``folder`` is, or can be created as, a folder this process can write in;
    else the problem (``--option: path: reason``).

    Nothing is left behind: a probe file is written and deleted, and the folders created
    for the check are removed again (the run creates them when it has something to write).
    """
    if folder.exists() and not folder.is_dir():
        return f"{option}: {folder}: exists and is not a folder"
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".gauntlet-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except (OSError, ValueError) as e:  # ValueError: a NUL or an unencodable character
        reason = getattr(e, "strerror", None) or str(e)
        return f"{option}: {folder}: cannot create or write this folder ({reason})"
    finally:
        for p in missing:
            try:
                p.rmdir()
            except OSError:
                continue  # never created (mkdir failed) or no longer empty
    return None


def _missing_submissions(folder: Path) -> str:
    return f"--submissions: {folder}: no such folder (run from the repository root, or pass --submissions)"


def cmd_validate(args: argparse.Namespace) -> int:
    from gauntlet.benchmark.manifest import ManifestError
    from gauntlet.benchmark.registry import manifest_paths, validate

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
    from gauntlet.attacks.registry import attack_ids, make_attack
    from gauntlet.benchmark.datasets import DATASETS
    from gauntlet.benchmark.registry import manifest_paths, validate
    from gauntlet.benchmark.threats import FIXED_THREATS, get_threat

    if not args.submissions.exists():
        return _bad(_missing_submissions(args.submissions))
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
    from gauntlet.benchmark.config import MAX_SEED, ConfigError, resolve_device
    from gauntlet.benchmark.datasets import DatasetError
    from gauntlet.benchmark.manifest import ManifestError
    from gauntlet.benchmark.registry import load_submission, semantic_problems
    from gauntlet.benchmark.sandbox import SandboxUnavailable, train_in_sandbox
    from gauntlet.benchmark.training import TrainingError, train_submission

    if not args.id or args.id in (".", "..") or "/" in args.id or os.sep in args.id:
        return _bad(f"id: expected a submission folder name, got {args.id!r}")
    if not 0 <= args.seed <= MAX_SEED:
        return _bad(f"--seed: must be an integer from 0 to 2**63 - 1, got {args.seed}")
    path = args.submissions / args.id / "manifest.yaml"
    if not path.is_file():
        return _bad(f"{path}: (path): no such submission")
    try:
        device = str(resolve_device(args.device))
        sub = load_submission(path)
    except ConfigError as e:
        return _bad(_config_problem(e))
    except ManifestError as e:
        return _bad(e.problems)
    # Training writes the weights and their sha256: a new submission has neither yet.
    problems = [p for p in semantic_problems(sub, check_weights=False)
                if ".weights:" not in p and "model.sha256:" not in p]
    if problems:
        return _bad(problems)
    try:
        if args.unsafe_no_sandbox:
            _, seconds = train_submission(sub, submissions_dir=args.submissions, data_dir=args.data_dir,
                                          device=device, seed=args.seed)
        else:
            seconds = train_in_sandbox(sub, submissions_dir=args.submissions, data_dir=args.data_dir,
                                       device=device, seed=args.seed)
    except SandboxUnavailable as e:
        return _bad(f"sandbox: {e}")
    except TrainingError as e:
        return _bad(str(e), EXIT_BAD_INPUT if e.bad_input else EXIT_JOBS_FAILED)
    except (ValueError, DatasetError) as e:
        return _bad(str(e))
    except OSError as e:
        return _bad(f"{sub.path}: model.weights: cannot write ({e.strerror or e})")
    print(f"trained {sub.id} in {seconds:.1f} s; weights and sha256 written to {sub.path}")
    return EXIT_OK


def _site_problem(site: Path, results: Path) -> str | None:
    """Why building the site in ``site`` would destroy something, or None.

    The builder replaces the site's generated sub-folders (``results/``, ``plots/``, …):
    in a folder that is not a site (``--site .`` in the repository would replace
    ``defenses/``), or one that holds or lies inside the result folder, that deletes
    files it did not write.
    """
    from gauntlet.leaderboard.site import GENERATED

    s, r = site.resolve(), results.resolve()
    if s == r or s in r.parents or r in s.parents:
        return f"--site: {site}: overlaps the result folder {results} (one must not contain the other)"
    ours = [g for g in GENERATED if (site / g).exists()]
    if ours and not (site / "index.html").is_file():
        return (f"--site: {site}: not a site built by gauntlet (no index.html), yet it has "
                f"{', '.join(g + '/' for g in ours)}, which building would replace")
    return None


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from gauntlet.benchmark.results import ResultError
    from gauntlet.leaderboard.site import build_site

    if not args.results.is_dir():
        return _bad(f"{args.results}: (path): no result folder; run 'gauntlet run' first")
    problem = _writable("--site", args.site) or _site_problem(args.site, args.results)
    if problem:
        return _bad(problem)
    try:
        from gauntlet.benchmark.catalog import fallback_catalog

        index = build_site(args.results, args.site, args.submissions, fallback_catalog(args.results))
    except ResultError as e:
        return _bad(str(e))
    print(f"site written: {index}")
    return EXIT_OK


def _summary_table(results_dir: Path, threats: tuple[str, ...]) -> str:
    from gauntlet.benchmark.results import iter_results
    import pandas as pd

    from gauntlet.benchmark.flags import worst_case_accuracy

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


def _run_config(args: argparse.Namespace) -> Any:
    """The :class:`RunConfig` of ``gauntlet run``'s options.

    Raises:
        ValueError: ``--option: reason`` (threat ids, executor, every RunConfig check).
    """
    from gauntlet.benchmark.config import ConfigError, RunConfig
    from gauntlet.benchmark.threats import FIXED_THREATS, get_threat

    if args.no_isolation and args.executor not in (None, "in-process"):
        raise ValueError(f"--executor: {args.executor!r} contradicts --no-isolation (in-process)")
    try:  # canonical ids, once each: 'linf-0.0310' is 'linf-0.031', its result files' name
        threats = tuple(dict.fromkeys(get_threat(t).id for t in args.threat)) or FIXED_THREATS
    except ValueError as e:
        raise ValueError(f"--threat: {e}") from None
    try:
        return RunConfig(submissions_dir=args.submissions, defenses=tuple(args.defense),
                         attacks=tuple(args.attack), threats=threats,
                         profile=args.profile, n_examples=args.n_examples, device=args.device,
                         seed=args.seed, results_dir=args.results, data_dir=args.data_dir,
                         batch_size=args.batch_size, download=args.download,
                         sweep=False if args.no_sweep else None, certify=not args.no_certify,
                         isolate=not args.no_isolation, job_timeout_s=args.job_timeout,
                         job_memory_mb=args.job_memory, workers=args.workers, cascade=not args.no_cascade,
                         executor=args.executor or ("in-process" if args.no_isolation else "local"),
                         ray_address=args.ray_address, sandbox="none" if args.unsafe_no_sandbox else "bwrap")
    except ConfigError as e:
        raise ValueError(_config_problem(e)) from None


def _check_run_options(args: argparse.Namespace) -> list[str]:
    """Problems with ``gauntlet run``'s options found without running anything."""
    from gauntlet.attacks.registry import make_attack
    from gauntlet.benchmark.registry import manifest_paths

    if not args.submissions.exists():
        return [_missing_submissions(args.submissions)]
    if not manifest_paths([args.submissions]):  # a run of nothing would "succeed"
        return [f"--submissions: {args.submissions}: no manifest.yaml found (expected <folder>/<id>/manifest.yaml)"]
    problems = []
    for a in args.attack:
        try:
            make_attack(a)
        except (KeyError, ValueError) as e:
            problems.append(f"--attack: {_message(e)}")
    problems.append(_writable("--results", args.results))
    if not args.no_site:
        problems.append(_writable("--site", args.site) or _site_problem(args.site, args.results))
    return [p for p in problems if p]


def _summary_line(summary: Any, results: Path) -> str:
    """``12 result files written, 2 error records written, 30 reused (resume) in results``."""
    return (f"{len(summary.written)} result files written, {len(summary.error_records)} error records written, "
            f"{len(summary.skipped)} reused (resume) in {results}")


def cmd_run(args: argparse.Namespace) -> int:
    from gauntlet.benchmark import runner
    from gauntlet.benchmark.datasets import DatasetError
    from gauntlet.benchmark.manifest import ManifestError
    from gauntlet.benchmark.results import ResultError
    from gauntlet.benchmark.sandbox import SandboxUnavailable

    try:
        cfg = _run_config(args)
    except ValueError as e:
        return _bad(str(e))
    problems = _check_run_options(args)
    if problems:
        return _bad(problems)
    try:
        summary = runner.run(cfg, progress=not args.quiet)
    except ManifestError as e:
        return _bad(e.problems)
    except SandboxUnavailable as e:
        return _bad(f"sandbox: {e}")
    except (KeyError, ValueError, DatasetError) as e:
        return _bad(_config_problem(e) if hasattr(e, "field") else _message(e))
    for line in summary.unavailable:
        print(line, file=sys.stderr)
    print(_summary_line(summary, args.results))
    try:
        print(_summary_table(args.results, cfg.threats))
    except ResultError as e:
        return _bad(str(e))
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


def _guarded(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; an exception no check foresaw is one ``internal error`` line, exit 1.

    ``GAUNTLET_DEBUG=1`` re-raises it instead, with its traceback.
    """
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted: finished result files are kept; run again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("GAUNTLET_DEBUG") == "1":
            raise
        message = " ".join(str(e).split())
        print(f"error: internal error: {type(e).__name__}: {message} "
              f"(report this; rerun with GAUNTLET_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_JOBS_FAILED


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gauntlet`` console script."""
    args = _parser().parse_args(argv)
    handlers = {"run": cmd_run, "validate": cmd_validate, "list": cmd_list, "train": cmd_train,
                "leaderboard": cmd_leaderboard, "report": cmd_report,
                "schema": lambda a: print(json.dumps(_schema(), indent=2)) or EXIT_OK}
    return _guarded(handlers[args.command], args)


def _schema() -> dict:
    from gauntlet.benchmark.manifest import json_schema

    return json_schema()


if __name__ == "__main__":
    sys.exit(main())
