"""What a result's config hash says about the code behind it.

A result can depend on any module of the harness (an attack, :mod:`gauntlet.attacks.adaptive`,
:mod:`gauntlet.attacks.losses`, the runner, the scorer, a certifier, a defense building block),
so the hash covers every Python source file of the packages that compute results —
``benchmark``, ``attacks`` and ``defenses`` — and every file of the submission folder
(manifest, weights, the submission's own code). Hashing the whole tree is cheap (a few
hundred kB, read once per process) and, unlike a list of modules, cannot be forgotten
when a new helper module appears. The ``leaderboard`` package only reads result files
(it is imported by no package above; ``tests/test_imports.py`` checks that), so a change
of the site does not recompute results.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

#: Packages whose every ``.py`` file is hashed (imported by name, found by their folder).
HASHED_PACKAGES = ("gauntlet.benchmark", "gauntlet.attacks", "gauntlet.defenses")
_SKIP = ("__pycache__",)


def _tree_digest(root: Path, pattern: str) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob(pattern) if p.is_file() and not set(p.parts) & set(_SKIP)):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@lru_cache(maxsize=None)
def _package_digest(folder: str) -> str:
    return _tree_digest(Path(folder), "*.py")


def package_folders(packages: tuple[str, ...] = HASHED_PACKAGES) -> list[Path]:
    """The source folders of ``packages`` (where they are imported from)."""
    import importlib

    # ``__path__``: the folder also of a namespace package (no ``__init__.py``).
    return [Path(next(iter(importlib.import_module(p).__path__))).resolve() for p in packages]


def code_hash(packages: tuple[str, ...] | None = None) -> str:
    """Hash of every Python source file of the result-computing packages.

    Args:
        packages: package names; default :data:`HASHED_PACKAGES` (read at call time, so
            a test can point it elsewhere).
    """
    folders = package_folders(HASHED_PACKAGES if packages is None else packages)
    joined = "".join(f"{f.name}:{_package_digest(str(f))};" for f in folders)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def _folder_digest(folder: str, stamp: tuple) -> str:
    return _tree_digest(Path(folder), "*")


def submission_files_hash(folder: Path) -> str:
    """Hash of every file of a submission folder (paths and contents).

    Cached per process and keyed by the files' sizes and modification times, so a
    long-lived worker notices an edited file.
    """
    root = Path(folder).resolve()
    stamp = tuple(sorted((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                         for p in root.rglob("*") if p.is_file() and not set(p.parts) & set(_SKIP)))
    return _folder_digest(str(root), stamp)[:16]


def clear_cache() -> None:
    """Forget the cached digests (tests that edit source files)."""
    _package_digest.cache_clear()
    _folder_digest.cache_clear()
