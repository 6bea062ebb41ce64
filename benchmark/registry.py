"""Submissions: discovery, validation and turning a manifest into a defense.

Validation (:func:`validate`) reads manifests and weights but imports no submitted code:
a factory name is checked against the top-level names in its module's *source*, parsed
with :mod:`ast`. Only :func:`build_defense` imports code. A factory ``"module:Name"``
resolves first to ``<submission folder>/<module>.py`` and then to an importable module.
Submitted weights are untrusted: their sha256 is checked before they are opened, and
they are read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.datasets import DATASETS
from benchmark.manifest import Factory, Manifest, ManifestError, parse_manifest, sha256_file
from benchmark.threats import get_threat

MANIFEST_NAME = "manifest.yaml"
#: Largest weights or data file a submission may ship (docs/submitting.md).
MAX_WEIGHTS_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Submission:
    """A parsed submission folder.

    Attributes:
        folder: the submission folder.
        manifest: the parsed manifest.
        manifest_sha256: sha256 of ``manifest.yaml``'s bytes (part of every config hash).
    """

    folder: Path
    manifest: Manifest
    manifest_sha256: str

    @property
    def id(self) -> str:
        """The submission id."""
        return self.manifest.id

    @property
    def weights_sha256(self) -> dict[str, str]:
        """Manifest field → sha256 of every weights file the submission declares."""
        return {field: spec.sha256 for field, spec in factory_specs(self.manifest) if spec.sha256}

    @property
    def path(self) -> Path:
        """The manifest file."""
        return self.folder / MANIFEST_NAME


def factory_specs(m: Manifest) -> list[tuple[str, Factory]]:
    """The model and each preprocessing step, with their manifest field names."""
    steps = m.defense.steps if m.defense else []
    return [("model", m.model)] + [(f"defense.steps[{i}]", s) for i, s in enumerate(steps)]


def manifest_paths(targets: list[Path]) -> list[Path]:
    """Manifest files named by ``targets``: files, submission folders, or trees of them."""
    found: list[Path] = []
    for t in targets:
        if t.is_file():
            found.append(t)
        elif (t / MANIFEST_NAME).is_file():
            found.append(t / MANIFEST_NAME)
        elif t.is_dir():
            found.extend(sorted(t.glob(f"*/{MANIFEST_NAME}")))
        else:
            raise ManifestError([f"{t}: (path): no such file or folder"])
    return found


def load_submission(path: Path) -> Submission:
    """Parse one manifest (types only).

    Raises:
        ManifestError: ``file: field: reason`` lines.
    """
    manifest = parse_manifest(path)
    return Submission(path.parent, manifest, sha256_file(path))


# -- factories ----------------------------------------------------------------------------

def _inside(folder: Path, relative: str) -> Path | None:
    """``folder/relative`` if it stays inside ``folder`` (links resolved), else None."""
    if Path(relative).is_absolute():
        return None
    base = folder.resolve()
    target = (folder / relative).resolve()
    return target if target == base or base in target.parents else None


def _local_module(folder: Path, module: str) -> Path | None:
    candidate = _inside(folder, module.replace(".", "/") + ".py")
    return candidate if candidate is not None and candidate.is_file() else None


def _module_source(folder: Path, module: str) -> tuple[str, str] | None:
    """(origin, source) of a factory's module without executing it, or None."""
    local = _local_module(folder, module)
    if local is not None:
        return str(local), local.read_text(encoding="utf-8")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return spec.origin, Path(spec.origin).read_text(encoding="utf-8")


def _top_level_names(source: str) -> list[str]:
    names: list[str] = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names.extend(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            names.extend(a.asname or a.name for a in node.names)
    return names


def check_factory(spec: str, folder: Path) -> str | None:
    """Why ``spec`` cannot be resolved (with close names), or None when it can."""
    module, _, name = spec.partition(":")
    found = _module_source(folder, module)
    if found is None:
        return f"module {module!r} not found in the submission folder or installed packages"
    origin, source = found
    try:
        names = _top_level_names(source)
    except SyntaxError as e:
        return f"module {module!r} ({origin}) has a syntax error at line {e.lineno}"
    if name in names:
        return None
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(f'{module}:{c}' for c in close)}?" if close else ""
    return f"{module!r} has no {name!r}{hint}"


def resolve(spec: str, folder: Path, submission_id: str) -> Any:
    """Import and return the object named by ``"module:Name"`` (runs code)."""
    module, _, name = spec.partition(":")
    local = _local_module(folder, module)
    if local is not None:
        qualified = f"gauntlet_submissions.{submission_id.replace('-', '_')}.{module}"
        mod = sys.modules.get(qualified)
        if mod is None:
            mod_spec = importlib.util.spec_from_file_location(qualified, local)
            mod = importlib.util.module_from_spec(mod_spec)
            sys.modules[qualified] = mod
            mod_spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(module)
    return getattr(mod, name)


# -- weights ------------------------------------------------------------------------------

def weights_path(folder: Path, relative: str) -> Path:
    """The weights file, refusing paths that leave the submission folder.

    Raises:
        ValueError: the path escapes the folder or does not exist.
    """
    target = _inside(folder, relative)
    if target is None:
        raise ValueError(f"path {relative!r} leaves the submission folder")
    if not target.is_file():
        raise ValueError(f"file {relative!r} not found in {folder}")
    size = target.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise ValueError(f"{relative!r} is {size / 2**20:.1f} MiB; the limit is {MAX_WEIGHTS_BYTES / 2**20:.0f} MiB")
    return target


def load_weights(folder: Path, spec: Factory) -> dict[str, torch.Tensor]:
    """Check sha256, then load a state dict with ``weights_only=True``.

    Raises:
        ValueError: wrong hash, bad path, or a file that is not a tensor state dict.
    """
    path = weights_path(folder, spec.weights)
    actual = sha256_file(path)
    if spec.sha256 is None:
        raise ValueError("weights given without sha256")
    if actual != spec.sha256:
        raise ValueError(f"sha256 of {spec.weights} is {actual}, manifest says {spec.sha256}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise ValueError(f"{spec.weights} is not loadable with weights_only=True: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{spec.weights} is not a state dict of tensors")
    return state


# -- validation ---------------------------------------------------------------------------

def semantic_problems(sub: Submission, check_weights: bool = True) -> list[str]:
    """Problems a schema cannot see, as ``file: field: reason`` (imports no defense code)."""
    from attacks.registry import attack_ids  # attack ids only; no defense code

    m, where, out = sub.manifest, sub.path, []
    if m.id != sub.folder.name:
        out.append(f"{where}: id: {m.id!r} must equal the folder name {sub.folder.name!r}")
    if m.dataset not in DATASETS:
        close = difflib.get_close_matches(m.dataset, list(DATASETS), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        out.append(f"{where}: dataset: unknown dataset {m.dataset!r}{hint} (registered: {sorted(DATASETS)})")
    if m.defense is not None and m.defense.factory:
        problem = check_factory(m.defense.factory, sub.folder)
        if problem:
            out.append(f"{where}: defense.factory: {problem}")
    for field, spec in factory_specs(m):
        problem = check_factory(spec.factory, sub.folder)
        if problem:
            out.append(f"{where}: {field}.factory: {problem}")
        if spec.weights is None:
            if spec.sha256 is not None:
                out.append(f"{where}: {field}.sha256: given without weights")
            continue
        if spec.sha256 is None:
            out.append(f"{where}: {field}.sha256: required when weights are given")
            continue
        try:
            if check_weights:
                load_weights(sub.folder, spec)
            else:
                weights_path(sub.folder, spec.weights)
        except ValueError as e:
            out.append(f"{where}: {field}.weights: {e}")
    if m.train is not None:
        problem = check_factory(m.train.recipe, sub.folder)
        if problem:
            out.append(f"{where}: train.recipe: {problem}")
    for i, claim in enumerate(m.claims):
        try:
            get_threat(claim.threat)
        except ValueError as e:
            out.append(f"{where}: claims[{i}].threat: {e}")
        if claim.dataset is not None and claim.dataset == m.dataset:
            out.append(f"{where}: claims[{i}].dataset: omit it when it equals the manifest's dataset")
    known = attack_ids()
    for i, o in enumerate(m.attack_overrides):
        if o.attack not in known:
            close = difflib.get_close_matches(o.attack, known, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            out.append(f"{where}: attack_overrides[{i}].attack: unknown attack {o.attack!r}{hint}")
    return out


def validate(paths: list[Path], check_weights: bool = True) -> tuple[list[Submission], list[str]]:
    """Parse and check manifests; return the valid submissions and every problem."""
    subs, problems = [], []
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            sub = load_submission(path)
        except ManifestError as e:
            problems.extend(e.problems)
            continue
        found = semantic_problems(sub, check_weights)
        if sub.id in seen:
            found.append(f"{path}: id: duplicate of {seen[sub.id]}")
        seen.setdefault(sub.id, path)
        problems.extend(found)
        if not found:
            subs.append(sub)
    return subs, problems


# -- building -----------------------------------------------------------------------------

def _instantiate(spec: Factory, sub: Submission) -> nn.Module:
    obj = resolve(spec.factory, sub.folder, sub.id)(**spec.args)
    if spec.weights is not None:
        obj.load_state_dict(load_weights(sub.folder, spec))
    return obj


def build_classifier(sub: Submission) -> nn.Module:
    """The undefended model of a submission with its weights (trainable)."""
    return _instantiate(sub.manifest.model, sub)


def build_defense(sub: Submission, device: str | torch.device = "cpu",
                  classifier: nn.Module | None = None) -> nn.Module:
    """Instantiate the defense of a submission, in eval mode, parameters frozen.

    Args:
        classifier: use this model instead of loading the manifest's weights (training).
    """
    from defenses.pipeline import Defense

    m = sub.manifest
    model = classifier if classifier is not None else build_classifier(sub)
    steps = [_instantiate(s, sub) for s in (m.defense.steps if m.defense else [])]
    wrapper = resolve(m.defense.factory, sub.folder, sub.id) if m.defense and m.defense.factory else Defense
    extra = dict(m.defense.args) if m.defense and m.defense.factory else {}
    defense = wrapper(model, steps, **extra)
    if m.properties.rejects and not getattr(defense, "rejects", False):
        defense.rejects = True
    if m.properties.randomized and not getattr(defense, "randomized", False):
        defense.randomized = True  # every attack and the scorer read the defense's own flag
    defense.eval().to(device)
    for p in defense.parameters():
        p.requires_grad_(False)
    return defense
