"""Gauntlet: adaptive attacks and certificates for image classifiers, side by side.

The installed namespace. The harness lives in four subpackages (folders of the same
names at the repository's top level):

* :mod:`gauntlet.benchmark`: manifests, the runner, scoring, certification, result files;
* :mod:`gauntlet.attacks`: the registered adaptive attacks;
* :mod:`gauntlet.defenses`: defense building blocks, models and training recipes;
* :mod:`gauntlet.leaderboard`: the static site.

The Python API (:mod:`gauntlet.api`, see docs/api.md) is importable from here:
:func:`evaluate`, :func:`certify`, :class:`Defense`, :class:`Report`. They load on first
use, so ``import gauntlet.benchmark…`` (every worker and sandbox does) stays light.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
_API = ("evaluate", "certify", "Defense", "Report", "Certificate", "load_submission")
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from gauntlet import api

        return getattr(api, name)
    raise AttributeError(f"module 'gauntlet' has no attribute {name!r}")
