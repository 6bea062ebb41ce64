"""Submissions: discovery, validation and turning a manifest into a defense.

Validation (:func:`validate`) reads manifests and weights but imports no submitted code
and asks no import machinery anything (``importlib.util.find_spec("a.b")`` imports ``a``):
a factory name is checked against the top-level names in its module's *source*, found
by path and parsed with :mod:`ast`. Only :func:`build_defense` imports code.

A factory ``"module:Name"`` names one of two things, nothing else
(:func:`locate_module`):

- ``<submission folder>/<module path>.py``, loaded under a private name, whose top-level
  name is not a project package, a standard-library module or an installed one (such a
  file would read, to a reviewer, as the module it shadows);
- a module of the project's ``defenses`` package, found beside :mod:`benchmark`.

A standard-library or installed callable (``subprocess:Popen``, ``shutil:rmtree``,
``torchvision.models:resnet18``) is refused: a manifest with no Python file would
otherwise run one with arguments of its choosing. No reference submission names anything
else; a submitter who wants a torchvision model writes a two-line module in the folder,
which a reviewer then reads. A name a module imports counts only when it comes from the
submission or from ``defenses`` (``defenses.quilting:Path`` is not a factory).
Submitted weights are untrusted: their sha256 is checked before they are opened, and
they are read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gauntlet.benchmark.datasets import DATASETS
from gauntlet.benchmark.manifest import (Factory, Manifest, ManifestError, parse_manifest, read_manifest_bytes,
                                sha256_file)
from gauntlet.benchmark.threats import get_threat

MANIFEST_NAME = "manifest.yaml"
#: Largest Python module a factory may name (its source is parsed at validation).
MAX_MODULE_BYTES = 1024 * 1024
#: Most files and folders a submission folder may hold (it is walked at validation).
MAX_FOLDER_ENTRIES = 1000
#: The one project package a manifest may name code from, as manifests spell it
#: (``defenses.models:SmallCNN``, short for ``gauntlet.defenses.models:SmallCNN``; both resolve).
FACTORY_PACKAGE = "defenses"
#: The project's own names (no submission module may take them): the installed namespace,
#: its subpackages' folder names (which a checkout's root puts on ``sys.path``) and the
#: namespace that submitted modules are imported under.
PROJECT_PACKAGES = frozenset({"gauntlet", "attacks", "benchmark", "defenses", "leaderboard", "gauntlet_submissions"})
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
    """Manifest files named by ``targets``: files, submission folders, or trees of them.

    Anything named ``manifest.yaml`` counts, links and FIFOs included, so that reading it
    refuses it (:func:`gauntlet.benchmark.manifest.read_manifest_bytes`) instead of a submission
    silently missing from the run.
    """
    found: list[Path] = []
    for t in targets:
        if os.path.lexists(t) and not t.is_dir():
            found.append(t)
        elif os.path.lexists(t / MANIFEST_NAME):
            found.append(t / MANIFEST_NAME)
        elif t.is_dir():
            found.extend(sorted(d / MANIFEST_NAME for d in t.iterdir()
                                if d.is_dir() and os.path.lexists(d / MANIFEST_NAME)))
        else:
            raise ManifestError([f"{t}: (path): no such file or folder"])
    return found


def load_submission(path: Path) -> Submission:
    """Parse one manifest (types only).

    Raises:
        ManifestError: ``file: field: reason`` lines.
    """
    data = read_manifest_bytes(path)
    manifest = parse_manifest(path, data)
    return Submission(path.parent, manifest, hashlib.sha256(data).hexdigest())


# -- factories ----------------------------------------------------------------------------

def _inside(folder: Path, relative: str) -> Path | None:
    """``folder/relative`` if it stays inside ``folder`` (links resolved), else None."""
    if Path(relative).is_absolute():
        return None
    base = folder.resolve()
    target = (folder / relative).resolve()
    return target if target == base or base in target.parents else None


_BUILT_IN_NAMES = PROJECT_PACKAGES | frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names)


@functools.cache
def _installed_names() -> frozenset[str]:
    # Read from the distributions' metadata, nothing imported (~0.4 s with torch installed).
    return frozenset(importlib.metadata.packages_distributions())


def is_reserved_module_name(name: str) -> bool:
    """A top-level name a submission's own module may not take: a project package, a
    standard-library or built-in module, or one an installed distribution provides."""
    return name in _BUILT_IN_NAMES or name in _installed_names()


def _shown(name: object) -> str:
    """A submitter's file name on one line (quoted when it holds anything unusual)."""
    text = str(name)
    return text if re.fullmatch(r"[A-Za-z0-9_./+-]+", text) else json.dumps(text)


def _module_name(name: str, is_dir: bool) -> str | None:
    """The top-level module name a folder entry would be imported as, if any."""
    if is_dir:
        return name
    for suffix in importlib.machinery.all_suffixes():  # .py, .pyc, .so, .cpython-311-…so
        if name.endswith(suffix):
            return name[: -len(suffix)].split(".")[0]
    return None


def _list(folder: Path, limit: int) -> list[os.DirEntry]:
    """At most ``limit`` entries of ``folder``, by name."""
    with os.scandir(folder) as it:
        return sorted(itertools.islice(it, limit), key=lambda e: e.name)


def folder_problems(folder: Path) -> list[str]:
    """Why the submission folder's files cannot be trusted by name, as reasons.

    A symbolic link that leaves the folder (a module or weights file could be any file of
    the machine), and a module or package whose top-level name is a project package, a
    standard-library or an installed module (``defenses/models.py``, ``torch.py``): on
    ``sys.path`` it would replace the real one, and in a manifest it reads as the real one.
    Nothing is followed or imported; at most :data:`MAX_FOLDER_ENTRIES` entries are read.
    """
    if folder.is_symlink():
        return [f"the submission folder is a symbolic link (to {_shown(folder.resolve())})"]
    base = folder.resolve()
    out: list[str] = []
    budget = MAX_FOLDER_ENTRIES
    code_dirs: set[str] = set()  # top-level folders holding Python code
    pending = [(folder, "")]
    while pending:
        current, rel = pending.pop()
        try:
            entries = _list(current, budget + 1)
        except OSError as e:
            out.append(f"{_shown(rel or '.')}: cannot list: {e.strerror or e}")
            continue
        budget -= len(entries)
        if budget < 0:
            return out + [f"more than {MAX_FOLDER_ENTRIES} files and folders"]
        for entry in entries:
            name = f"{rel}{entry.name}"
            if entry.is_symlink():
                target = Path(entry.path).resolve()
                if target != base and base not in target.parents:
                    out.append(f"{_shown(name)}: a symbolic link to {_shown(target)}, outside the submission folder")
            elif entry.is_dir(follow_symlinks=False):
                pending.append((Path(entry.path), f"{name}/"))
            elif rel and _module_name(entry.name, False) is not None:
                code_dirs.add(rel.split("/")[0])
    try:
        top = _list(folder, MAX_FOLDER_ENTRIES)
    except OSError:
        top = []
    for entry in top:
        is_dir = entry.is_dir()  # a link to a package shadows like the package
        name = _module_name(entry.name, is_dir)
        if name is None or not is_reserved_module_name(name):
            continue
        if is_dir and not entry.is_symlink() and entry.name not in code_dirs:
            continue  # a data folder, not a package
        kind = "the project's package" if name in PROJECT_PACKAGES else "the installed or standard-library module"
        out.append(f"{_shown(entry.name + ('/' if is_dir else ''))}: would shadow {kind} {name!r}; rename it")
    return out


def factory_package_parts(module: str) -> list[str] | None:
    """The path of ``module`` inside the project's defenses package, or None when it names
    another module: ``defenses.models`` and ``gauntlet.defenses.models`` → ``["models"]``."""
    parts = module.split(".")
    if parts[0] == FACTORY_PACKAGE:
        return parts[1:]
    if parts[:2] == ["gauntlet", FACTORY_PACKAGE]:
        return parts[2:]
    return None


def locate_module(module: str, folder: Path) -> tuple[Path | None, str | None]:
    """The file a factory's module names, found by path only: ``(path, None)`` or ``(None, why not)``.

    ``defenses.<name>`` is the project's package (beside :mod:`benchmark`); any other
    module is ``<folder>/<module path>.py``, unless its top-level name is reserved
    (:func:`is_reserved_module_name`), which a factory may never name.
    """
    inner = factory_package_parts(module)
    if inner is not None:
        parts = [FACTORY_PACKAGE, *inner]
        for candidate in (_PROJECT_ROOT.joinpath(*parts[:-1], parts[-1] + ".py"),
                          _PROJECT_ROOT.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate, None
        return None, f"module {module!r} not found in the project's {FACTORY_PACKAGE} package"
    parts = module.split(".")
    if is_reserved_module_name(parts[0]):
        return None, (f"module {module!r} is not allowed: a factory names a module of the submission folder "
                      f"(<module>.py) or of the project's {FACTORY_PACKAGE} package, never a standard-library "
                      f"or installed module")
    relative = "/".join(parts) + ".py"
    lexical = folder.joinpath(*parts[:-1], parts[-1] + ".py")
    if not os.path.lexists(lexical):
        return None, (f"module {module!r} not found: no {relative} in the submission folder "
                      f"(and it is not a module of {FACTORY_PACKAGE})")
    target = _inside(folder, relative)
    if target is None:
        return None, f"module {module!r}: {relative} is a symbolic link that leaves the submission folder"
    if not target.is_file():
        return None, f"module {module!r}: {relative} is not a regular file"
    return target, None


def _allowed_import(node: ast.ImportFrom, local: bool) -> bool:
    """A name imported by ``node`` may be a factory: from ``defenses``, or, in a module of
    the submission (``local``), from another of its modules."""
    if node.level > 0 or not node.module:
        return True
    top = node.module.split(".")[0]
    return factory_package_parts(node.module) is not None or (local and not is_reserved_module_name(top))


def _top_level_names(tree: ast.Module, local: bool = True) -> tuple[list[str], dict[str, str]]:
    """(names a factory may name, imported names it may not → the module they come from)."""
    names: list[str] = []
    foreign: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names.extend(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                if _allowed_import(node, local):
                    names.append(a.asname or a.name)
                else:
                    foreign[a.asname or a.name] = node.module
    return names, foreign


#: The project's folders, which are importable only as ``gauntlet.<folder>``.
_OLD_TOP_LEVEL = frozenset({"attacks", "benchmark", "defenses", "leaderboard"})


def _old_project_import(tree: ast.Module) -> str | None:
    """The first import in ``tree`` of a project package by its folder name
    (``from defenses.pipeline import Step``), which only a checkout's root resolves."""
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        for n in names:
            if n.split(".")[0] in _OLD_TOP_LEVEL:
                return n
    return None


def check_factory(spec: str, folder: Path) -> str | None:
    """Why ``spec`` cannot be resolved (with close names), or None when it can (imports nothing)."""
    module, _, name = spec.partition(":")
    origin, problem = locate_module(module, folder)
    if origin is None:
        return problem
    try:
        size = origin.stat().st_size
        if size > MAX_MODULE_BYTES:
            return f"module {module!r} ({origin}) is {size} bytes; the limit is {MAX_MODULE_BYTES}"
        source = origin.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return f"module {module!r} ({origin}) cannot be read: {e}"
    local = factory_package_parts(module) is None
    try:
        tree = ast.parse(source)
        names, foreign = _top_level_names(tree, local=local)
        old = _old_project_import(tree) if local else None
    except SyntaxError as e:
        return f"module {module!r} ({origin}) has a syntax error at line {e.lineno}"
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        return f"module {module!r} ({origin}) cannot be parsed: {type(e).__name__}"
    if old:
        return (f"module {module!r} imports {old!r}: the project's packages are imported as "
                f"'gauntlet.{old}' (one installed namespace, docs/api.md)")
    if name in names:
        return None
    if name in foreign:
        return (f"{module!r} imports {name!r} from {foreign[name]!r}; a factory names a class or function "
                f"of the submission or of {FACTORY_PACKAGE}")
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(f'{module}:{c}' for c in close)}?" if close else ""
    return f"{module!r} has no {name!r}{hint}"


def resolve(spec: str, folder: Path, submission_id: str) -> Any:
    """Import and return the object named by ``"module:Name"`` (runs code).

    Raises:
        ValueError: ``spec`` names a module a factory may not name (:func:`locate_module`).
    """
    module, _, name = spec.partition(":")
    path, problem = locate_module(module, folder)
    if path is None:
        raise ValueError(f"{spec}: {problem}")
    inner = factory_package_parts(module)
    if inner is not None:
        mod = importlib.import_module(".".join(["gauntlet", FACTORY_PACKAGE, *inner]))
        if Path(getattr(mod, "__file__", None) or "").resolve() != path:  # a `defenses` earlier on sys.path
            raise ValueError(f"{spec}: imported {getattr(mod, '__file__', None)}, not the project's {path}")
    else:
        qualified = f"gauntlet_submissions.{submission_id.replace('-', '_')}.{module}"
        mod = sys.modules.get(qualified)
        if mod is None:
            mod_spec = importlib.util.spec_from_file_location(qualified, path)
            mod = importlib.util.module_from_spec(mod_spec)
            sys.modules[qualified] = mod
            mod_spec.loader.exec_module(mod)
    return getattr(mod, name)


# -- weights ------------------------------------------------------------------------------

def weights_limit(dataset_id: str) -> int:
    """Largest weights or data file, in bytes, a submission on ``dataset_id`` may ship
    (the dataset's ``max_weights_mib``; an unknown dataset, already reported by
    validation, gets the smallest)."""
    known = DATASETS.get(dataset_id)
    mib = known.max_weights_mib if known else min(d.max_weights_mib for d in DATASETS.values())
    return mib * 2**20


def weights_path(folder: Path, relative: str, limit: int) -> Path:
    """The weights file, refusing paths that leave the submission folder.

    Args:
        limit: largest size in bytes (:func:`weights_limit`).

    Raises:
        ValueError: the path escapes the folder, does not exist or is larger than ``limit``.
    """
    target = _inside(folder, relative)
    if target is None:
        raise ValueError(f"path {relative!r} leaves the submission folder")
    if not target.is_file():
        raise ValueError(f"file {relative!r} not found in {folder}")
    size = target.stat().st_size
    if size > limit:
        raise ValueError(f"{relative!r} is {size / 2**20:.1f} MiB; the limit is {limit / 2**20:.0f} MiB")
    return target


def load_weights(folder: Path, spec: Factory, limit: int) -> dict[str, torch.Tensor]:
    """Check size and sha256, then load a state dict with ``weights_only=True``.

    Raises:
        ValueError: wrong hash, bad path, or a file that is not a tensor state dict.
    """
    path = weights_path(folder, spec.weights, limit)
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
    from gauntlet.attacks.registry import override_problems  # attack registry only; no defense code

    m, where, out = sub.manifest, sub.path, []
    out.extend(f"{where}: (folder): {reason}" for reason in folder_problems(sub.folder))
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
                load_weights(sub.folder, spec, weights_limit(m.dataset))
            else:
                weights_path(sub.folder, spec.weights, weights_limit(m.dataset))
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
    # Attack ids, parameter names and budget floors (attacks/budgets.py).
    out.extend(f"{where}: {problem}" for problem in override_problems(m.attack_overrides))
    return out


def validate(paths: list[Path], check_weights: bool = True) -> tuple[list[Submission], list[str]]:
    """Parse and check manifests; return the valid submissions and every problem.

    One manifest's problems never stop the others from being checked: whatever checking
    one raises becomes a problem line of that manifest.
    """
    subs, problems = [], []
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            sub = load_submission(path)
            found = semantic_problems(sub, check_weights)
        except ManifestError as e:
            problems.extend(e.problems)
            continue
        except Exception as e:  # noqa: BLE001 - reported as this manifest's problem, never skipped
            problems.append(f"{path}: (validation): {type(e).__name__}: {' '.join(str(e).split())[:300]}")
            continue
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
        obj.load_state_dict(load_weights(sub.folder, spec, weights_limit(sub.manifest.dataset)))
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
    from gauntlet.defenses.pipeline import Defense

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
