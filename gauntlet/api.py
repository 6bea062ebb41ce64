"""The Python API: the benchmark's own runner, called from a notebook (docs/api.md).

:func:`evaluate` and :func:`certify` never reimplement what the runner does. They write
what a pull request would hold, a submission folder, into a working folder of their own,
with one difference: the folder's module hands the runner the object built in this
Python process (:func:`live_object`) instead of a class and weights. They then call the
runner itself (:func:`gauntlet.benchmark.runner.run`, in-process, without a sandbox: the
object is the caller's own code), or, for a certificate alone, the runner's certify job,
and read the result files back the way the site does (:mod:`gauntlet.leaderboard`). So a
notebook's numbers come from the same attacks, cascade, scoring, flags and intervals as
the leaderboard's, and :meth:`Report.to_submission` writes a folder that ``gauntlet run``
evaluates to the same numbers.
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
import yaml
from torch import nn

from gauntlet.benchmark.threats import FIXED_THREATS
from gauntlet.defenses.pipeline import Defense

__all__ = ["evaluate", "certify", "Defense", "Report", "Certificate", "live_object"]

#: Objects handed to the runner by token (:func:`live_object`), for the life of the process.
_LIVE: dict[str, nn.Module] = {}

_LIVE_MODULE = '''"""Written by gauntlet.evaluate: the defense built in the caller's Python process.

This folder is a working copy, never a submission: its factories return the object
registered under TOKEN in this process (gauntlet.api.live_object), so it only runs
in-process, without a sandbox. Report.to_submission writes the real folder.
"""
from gauntlet.api import live_object

TOKEN = {token!r}


def classifier():
    return live_object(TOKEN).classifier


def defense(model, steps):
    return live_object(TOKEN)
'''


def live_object(token: str) -> nn.Module:
    """The object :func:`evaluate` registered under ``token`` (read by its working folder)."""
    try:
        return _LIVE[token]
    except KeyError:
        raise ValueError(f"no live object {token!r} in this process: a folder written by gauntlet.evaluate "
                         "only runs in the process that wrote it; use Report.to_submission") from None


def _as_defense(model: nn.Module) -> Defense:
    """A copy of ``model`` as a :class:`Defense` (a bare classifier: no steps)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module or a gauntlet.Defense, got {type(model).__name__}")
    try:
        obj = copy.deepcopy(model)  # the runner freezes and moves what it builds: never the caller's
    except Exception:  # noqa: BLE001 - an uncopyable module is used as it is
        obj = model
    return obj if isinstance(obj, Defense) else Defense(obj)


def _data(x, y, dataset: str | None, n: int | None, data_dir) -> tuple[str, int | None]:
    """(dataset id, examples): a registered dataset's evaluation slice, or ``(x, y)``
    registered as a dataset of this process."""
    from gauntlet.benchmark.datasets import get_dataset, register_tensors

    if x is not None or y is not None:
        if x is None or y is None:
            raise ValueError("evaluate: give both x and y, or neither (and dataset=)")
        if dataset is not None:
            raise ValueError("evaluate: give x and y, or dataset=, not both")
        return register_tensors(torch.as_tensor(x), torch.as_tensor(y)), None
    if dataset is None:
        raise ValueError("evaluate: give x and y, or dataset= (a registered dataset id, e.g. 'mnist-embedded')")
    get_dataset(dataset)
    return dataset, n


def _working_folder(workdir: str | Path | None) -> Path:
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="gauntlet-"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_live_submission(root: Path, sub_id: str, dataset: str, defense: Defense, name: str,
                           certificate: dict | None, defense_spec: dict | None) -> str:
    token = uuid.uuid4().hex
    _LIVE[token] = defense
    # resolve() keeps a submission's modules by id: forget the previous evaluation's token
    sys.modules.pop(f"gauntlet_submissions.{sub_id.replace('-', '_')}.live", None)
    folder = root / "submissions" / sub_id
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "live.py").write_text(_LIVE_MODULE.format(token=token), encoding="utf-8")
    manifest = {"schema": 1, "id": sub_id, "name": name, "dataset": dataset,
                "model": {"factory": "live:classifier", "args": {}},
                "defense": defense_spec or {"factory": "live:defense", "args": {}},
                "properties": {"randomized": bool(defense.randomized), "rejects": bool(defense.rejects)},
                "claims": [], "certify": certificate}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True),
                                          encoding="utf-8")
    return token


def _config(root: Path, sub_id: str, dataset: str, n: int | None, **kw):
    from gauntlet.benchmark.datasets import DATASETS
    from gauntlet.benchmark.runner import RunConfig

    if n is None and dataset in DATASETS and dataset.startswith("tensors-"):
        n = len(DATASETS[dataset].split("test")[1])
    return RunConfig(submissions_dir=root / "submissions", results_dir=root / "results", defenses=(sub_id,),
                     n_examples=n, executor="in-process", isolate=False, sandbox="none", **kw)


def evaluate(model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None, *,
             dataset: str | None = None, n: int | None = None,
             threats: Sequence[str] = FIXED_THREATS, attacks: Sequence[str] = (), profile: str = "quick",
             device: str = "cpu", seed: int = 0, id: str = "notebook", name: str | None = None,
             cascade: bool = True, sweep: bool = False, batch_size: int | None = None,
             data_dir: str | Path | None = None, workdir: str | Path | None = None,
             progress: bool = True) -> Report:
    """Attack ``model`` with the benchmark's whole adaptive suite.

    Args:
        model: a classifier (``torch.nn.Module`` mapping inputs in [0, 1] to logits) or a
            :class:`Defense` built from steps (``Defense(steps=[JPEG(75)], classifier=m)``).
            It is copied; the caller's object is not changed.
        x, y: the examples (inputs in [0, 1], (N, C, H, W); labels), or None with ``dataset``.
        dataset: a registered dataset id: its fixed evaluation slice (the first ``n``, or the
            profile's count) is used, exactly as ``gauntlet run`` uses it.
        threats: threat ids, e.g. ``"linf-0.031"``, ``"l2-0.005"`` (the default: the fixed two).
        attacks: attack ids (empty: every registered attack).
        profile: the run profile (budgets, EOT draws): ``"quick"`` or ``"full"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        seed: master seed (every job derives its own from it and its run id).
        id: the submission id the numbers are recorded under; seeds derive from it, so
            :meth:`Report.to_submission` keeps it to reproduce them.
        name: display name (default: the model's class name).
        cascade: attacks after the baselines run only on the examples still robust.
        sweep: also attack along the profile's ε sweep (the curves of the site).
        workdir: where the working submission and result files go (default: a new
            temporary folder, kept for :meth:`Report.to_html` and :meth:`Report.to_submission`).
        progress: show the runner's progress bar.

    Returns:
        The :class:`Report`.

    Raises:
        ValueError: a bad argument (one line naming it), or the run failed to build the defense.
    """
    from gauntlet.attacks.registry import attack_ids
    from gauntlet.benchmark.runner import run
    from gauntlet.benchmark.threats import get_threat

    unknown = [a for a in attacks if a not in attack_ids()]
    if unknown:
        raise ValueError(f"evaluate: attacks: unknown {unknown}; registered: {attack_ids()}")
    for t in threats:
        get_threat(t)
    dataset_id, n = _data(x, y, dataset, n, data_dir)
    defense = _as_defense(model)
    root = _working_folder(workdir)
    label = name or type(defense.classifier).__name__
    token = _write_live_submission(root, id, dataset_id, defense, label, None, None)
    extra = {"batch_size": batch_size} if batch_size is not None else {}
    cfg = _config(root, id, dataset_id, n, threats=tuple(threats), attacks=tuple(attacks), profile=profile,
                  device=device, seed=seed, data_dir=Path(data_dir) if data_dir else None, cascade=cascade,
                  sweep=sweep, certify=False, **extra)
    try:
        summary = run(cfg, progress=progress)
    finally:
        _LIVE.pop(token, None)
    report = Report(root, id, dataset_id, tuple(threats), model=model, settings=dict(
        attacks=tuple(attacks), profile=profile, n=n, seed=seed, cascade=cascade, sweep=sweep, **extra))
    report.errors = list(summary.errors)
    return report


def certify(model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None, *,
            sigma: float | None = None, n: int = 100_000, n0: int = 100, alpha: float = 0.001,
            batch: int = 1000, method: str | None = None, dataset: str | None = None,
            examples: int | None = None, threats: Sequence[str] = FIXED_THREATS, device: str = "cpu",
            seed: int = 0, id: str = "notebook", data_dir: str | Path | None = None,
            workdir: str | Path | None = None) -> Certificate:
    """Certify ``model`` as the runner's certify job does.

    With ``sigma``: randomized smoothing (Cohen et al. 2019) of ``model`` as the base
    classifier, ``n0`` samples to pick the class, ``n`` to bound it, failure probability
    ``alpha``. Without: the Lipschitz margin (``model`` built from the project's
    :mod:`gauntlet.defenses.lipschitz` layers).

    Args:
        x, y / dataset, examples: the examples, as in :func:`evaluate` (``examples`` is its ``n``).
        threats: the certified accuracy is reported at each threat's radius.

    Returns:
        The :class:`Certificate`.
    """
    from gauntlet.benchmark.jobs import certify_job
    from gauntlet.benchmark.threats import get_threat
    from gauntlet.benchmark.worker import release, submission_run

    method = method or ("randomized-smoothing" if sigma is not None else "lipschitz")
    if method == "randomized-smoothing":
        if sigma is None or sigma <= 0:
            raise ValueError("certify: randomized smoothing needs sigma > 0")
        spec = {"method": method, "sigma": float(sigma), "n0": int(n0), "n": int(n), "alpha": float(alpha),
                "batch": int(batch)}
        defense_spec = {"factory": "defenses.smoothing:SmoothedDefense",
                        "args": {"sigma": float(sigma), "samples": int(n0), "alpha": float(alpha),
                                 "batch": int(batch)}}
    elif method == "lipschitz":
        spec, defense_spec = {"method": method}, None
    else:
        raise ValueError(f"certify: method must be 'randomized-smoothing' or 'lipschitz', got {method!r}")
    dataset_id, count = _data(x, y, dataset, examples, data_dir)
    defense = _as_defense(model)
    root = _working_folder(workdir)
    token = _write_live_submission(root, id, dataset_id, defense, type(defense.classifier).__name__, spec,
                                   defense_spec)
    cfg = _config(root, id, dataset_id, count, threats=tuple(threats), device=device, seed=seed,
                  data_dir=Path(data_dir) if data_dir else None)
    try:
        run = submission_run(cfg, id)
        _, record = certify_job(run, [get_threat(t) for t in threats])
    finally:
        release()
        _LIVE.pop(token, None)
    return Certificate(record)


# -- what comes back ------------------------------------------------------------------------

@dataclass
class Certificate:
    """A certify job's record, as tables.

    Attributes:
        record: the result record (the runner's ``certify`` file, schema of docs/results.md).
    """

    record: dict[str, Any]

    @property
    def summary(self) -> pd.DataFrame:
        """Per threat: certified accuracy with its exact 95% interval (as the site shows it)."""
        from gauntlet.leaderboard.worst import certificate_interval

        rows = []
        for t, value in (self.record["summary"].get("certified_accuracy") or {}).items():
            ci = certificate_interval(self.record, t)
            rows.append({"threat": t, "certified_accuracy": value, "ci_low": ci[0] if ci else None,
                         "ci_high": ci[1] if ci else None, "n": len(self.record["per_example"].get("correct") or [])})
        return pd.DataFrame(rows, columns=["threat", "certified_accuracy", "ci_low", "ci_high", "n"])

    @property
    def curve(self) -> pd.DataFrame:
        """Certified accuracy against radius (the site's certificate curve)."""
        from gauntlet.leaderboard.worst import certified_curve

        return certified_curve(self.record)

    @property
    def per_example(self) -> pd.DataFrame:
        """Per example: the certified radius and whether the prediction was correct."""
        return pd.DataFrame(self.record["per_example"])


@dataclass
class Report:
    """What :func:`evaluate` measured, read from its result files.

    Attributes:
        root: the working folder (``submissions/``, ``results/``).
        id: the submission id the results are recorded under.
        dataset: the dataset id.
        threats: the threat ids attacked.
        errors: one line per failed job (empty when every job ran).
    """

    root: Path
    id: str
    dataset: str
    threats: tuple[str, ...]
    model: nn.Module | None = field(default=None, repr=False)
    settings: dict[str, Any] = field(default_factory=dict, repr=False)
    errors: list[str] = field(default_factory=list)

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @functools.cached_property
    def _board(self):
        """The result files, read once (an evaluation's files do not change after it)."""
        from gauntlet.leaderboard.board import load_board

        return load_board(self.results_dir, self.root / "submissions")

    @property
    def summary(self) -> pd.DataFrame:
        """Per threat: clean and worst-case robust accuracy over the attacks, with exact
        95% intervals, the strongest attack, the naive baseline and the raised flags."""
        from gauntlet.leaderboard.worst import worst_case

        board, rows = self._board, []
        for t in self.threats:
            wc = worst_case(board, self.dataset, self.id, t)
            if wc is None:
                continue
            rows.append({"threat": t, "clean_accuracy": wc.clean_accuracy,
                         "clean_ci_low": wc.clean_ci[0] if wc.clean_ci else None,
                         "clean_ci_high": wc.clean_ci[1] if wc.clean_ci else None,
                         "robust_accuracy": wc.accuracy,
                         "robust_ci_low": wc.accuracy_ci[0] if wc.accuracy_ci else None,
                         "robust_ci_high": wc.accuracy_ci[1] if wc.accuracy_ci else None,
                         "strongest_attack": wc.strongest, "naive_attack": wc.naive,
                         "naive_accuracy": wc.per_attack.get(wc.naive) if wc.naive else None,
                         "n": wc.n, "failed": list(wc.failed),
                         "flags": [f["id"] for f in self._flags(board, t) if f.get("raised")]})
        return pd.DataFrame(rows)

    @property
    def attacks(self) -> pd.DataFrame:
        """One row per (threat, attack): robust accuracy with its interval, rejections,
        budget, seconds (the site's per-attack table, with a ``threat`` column)."""
        from gauntlet.leaderboard.details import attack_table

        board = self._board
        frames = [attack_table(board, self.dataset, self.id, t).assign(threat=t) for t in self.threats]
        frames = [f for f in frames if not f.empty]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def _flags(self, board, threat: str) -> list[dict[str, Any]]:
        from gauntlet.leaderboard.aggregate import flags

        return flags(board, self.dataset, self.id, threat) or []

    @property
    def flags(self) -> pd.DataFrame:
        """Every gradient-masking flag per threat: raised or not, its meaning, its numbers."""
        from gauntlet.leaderboard.aggregate import flag_docs

        board = self._board
        docs = flag_docs(board)
        rows = [{"threat": t, "flag": f["id"], "raised": f["raised"], "meaning": f["meaning"] or docs.get(f["id"], ""),
                 "numbers": f["numbers"]}
                for t in self.threats for f in self._flags(board, t)]
        return pd.DataFrame(rows, columns=["threat", "flag", "raised", "meaning", "numbers"])

    def per_example(self, threat: str, attack: str) -> pd.DataFrame:
        """Per example of one attack job: clean and robust correctness, rejections, ...
        (the record's ``per_example`` arrays, docs/results.md)."""
        board = self._board
        runs = [r for r in board.select("attack", self.dataset, self.id, threat)
                if r.record["attack"]["id"] == attack]
        if not runs:
            raise KeyError(f"no {attack!r} result at {threat!r}; attacks run: "
                           f"{sorted(r.record['attack']['id'] for r in board.select('attack', self.dataset, self.id, threat))}")
        n = len(runs[0].record["dataset"]["indices"])
        return pd.DataFrame({k: v for k, v in runs[0].record["per_example"].items()
                             if isinstance(v, list) and len(v) == n})

    def __str__(self) -> str:
        s = self.summary
        if s.empty:
            return f"Report({self.id}: no results; errors: {self.errors})"
        cols = ["threat", "clean_accuracy", "robust_accuracy", "robust_ci_low", "robust_ci_high",
                "strongest_attack", "naive_attack", "naive_accuracy", "n", "flags"]
        return f"{self.id} on {self.dataset}\n" + s[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")

    def to_html(self, folder: str | Path) -> Path:
        """Render the site's pages for these results into ``folder``; the per-defense page's path."""
        from gauntlet.leaderboard.site import build_site

        from gauntlet.leaderboard.site import defense_url

        site = Path(folder)
        index = build_site(self.results_dir, site, self.root / "submissions")
        page = site / defense_url(self.dataset, self.id)
        return page if page.is_file() else index

    def to_submission(self, folder: str | Path, *, name: str, paper: dict | None = None,
                      authors: Sequence[str] = (), claims: Sequence[dict] = (), notes: str | None = None,
                      randomized: bool | None = None) -> Path:
        """Write the folder a pull request needs: the model's module, its weights and a
        manifest with their sha256 (``gauntlet validate`` passes on it).

        ``gauntlet run --defense <id> --n-examples <n>`` on the folder reproduces this
        report's numbers: the folder's name must be the report's ``id`` (the seeds derive
        from it), and the module must be importable from a file (a class defined in a
        notebook cell cannot be written out; move it into a ``.py`` file).

        Args:
            folder: ``submissions/<id>``.
            name, paper, authors, claims, notes: the manifest's fields (docs/submitting.md).
            randomized: declare randomness (default: what the defense declares).

        Raises:
            ValueError: the folder's name is not the id, the dataset is not a registered
                benchmark dataset, or a component's class has no source file.
        """
        from gauntlet.benchmark.datasets import DATASETS
        from gauntlet.benchmark.manifest import sha256_file
        from gauntlet.benchmark.registry import load_submission, semantic_problems

        folder = Path(folder)
        if folder.name != self.id:
            raise ValueError(f"to_submission: folder {folder.name!r} is not the report's id {self.id!r} "
                             f"(evaluate(..., id={folder.name!r}) records under that id)")
        if self.dataset not in DATASETS or self.dataset.startswith("tensors-"):
            raise ValueError("to_submission: the report was measured on examples passed as tensors; "
                             "evaluate on a registered dataset (dataset=...) to make a submission")
        if self.model is None:
            raise ValueError("to_submission: the report holds no model")
        defense = self.model if isinstance(self.model, Defense) else Defense(self.model)
        folder.mkdir(parents=True, exist_ok=True)
        written: dict[str, str] = {}

        def module_of(obj: Any) -> str:
            cls = type(obj)
            if cls.__module__.startswith("gauntlet.defenses."):
                return cls.__module__.removeprefix("gauntlet.")
            if cls.__module__ == "__main__":  # a notebook cell or the running script, whose top level would run
                raise ValueError(f"to_submission: {cls.__qualname__} is defined in __main__; move it into a "
                                 "module file (e.g. model.py) and import it from there")
            src = inspect.getsourcefile(cls)
            if src is None or not Path(src).is_file():
                raise ValueError(f"to_submission: {cls.__qualname__} has no source file; define it in a .py file")
            stem = Path(src).stem
            if stem not in written:
                shutil.copyfile(src, folder / f"{stem}.py")
                written[stem] = src
            return stem

        def factory(obj: Any, weights: str | None) -> dict[str, Any]:
            args = _init_args(obj)
            try:  # the manifest must rebuild this very object: same class, arguments, parameter shapes
                type(obj)(**args).load_state_dict(obj.state_dict(), strict=True)
            except Exception as e:  # noqa: BLE001 - any failure means the arguments are not these
                raise ValueError(f"to_submission: {type(obj).__name__}(**{args}) does not rebuild the model "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); set "
                                 f"obj.init_args = {{...}} to its constructor arguments") from None
            spec: dict[str, Any] = {"factory": f"{module_of(obj)}:{type(obj).__name__}", "args": args}
            if weights is not None and any(True for _ in obj.state_dict()):
                torch.save({k: v.detach().cpu().contiguous() for k, v in obj.state_dict().items()}, folder / weights)
                spec.update(weights=weights, sha256=sha256_file(folder / weights))
            return spec

        manifest: dict[str, Any] = {"schema": 1, "id": self.id, "name": name}
        if paper:
            manifest["paper"] = dict(paper)
        manifest.update(authors=list(authors), dataset=self.dataset,
                        model=factory(defense.classifier, "weights.pt"))
        if len(defense.steps):
            manifest["defense"] = {"steps": [factory(s, f"step{i}.pt") for i, s in enumerate(defense.steps)]}
        manifest["properties"] = {"randomized": bool(defense.randomized if randomized is None else randomized),
                                  "rejects": bool(defense.rejects)}
        manifest["claims"] = [dict(c) for c in claims]
        if notes:
            manifest["notes"] = notes
        path = folder / "manifest.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True), encoding="utf-8")
        problems = semantic_problems(load_submission(path), check_weights=True)
        if problems:
            raise ValueError("to_submission: the written folder does not validate: " + "; ".join(problems))
        return folder

    def reproduce_command(self, submissions: str | Path = "submissions") -> str:
        """The ``gauntlet run`` command that recomputes these numbers from :meth:`to_submission`'s folder."""
        s = self.settings
        parts = ["gauntlet run", f"--submissions {submissions}", f"--defense {self.id}",
                 *(f"--threat {t}" for t in self.threats), *(f"--attack {a}" for a in s.get("attacks", ())),
                 f"--profile {s.get('profile', 'quick')}", f"--seed {s.get('seed', 0)}"]
        if s.get("n") is not None:
            parts.append(f"--n-examples {s['n']}")
        if not s.get("cascade", True):
            parts.append("--no-cascade")
        if not s.get("sweep", False):
            parts.append("--no-sweep")
        return " ".join(parts)


def _init_args(obj: nn.Module) -> dict[str, Any]:
    """The constructor arguments that rebuild ``obj``: those of its ``__init__`` signature
    whose values it keeps under the same name (an attribute, or a recorded ``init_args``)."""
    recorded = getattr(obj, "init_args", None)
    if isinstance(recorded, dict):
        return json.loads(json.dumps(recorded))
    out: dict[str, Any] = {}
    for p in list(inspect.signature(type(obj).__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(obj, p.name):
            value = getattr(obj, p.name)
            if isinstance(value, (bool, int, float, str)) and value != p.default:
                out[p.name] = value
        elif p.default is p.empty:
            raise ValueError(f"to_submission: {type(obj).__name__}({p.name}=...) is not kept on the object; "
                             "set obj.init_args = {...} to the constructor arguments")
    return out
