"""The attack catalog as data: ``<results>/attacks.json``, written by the runner.

Every registered attack with its one-line summary, default parameters and traits, in
registry order. The leaderboard reads this file (its methodology page, the
missing-attack rule, the traits of records written before they carried them) instead of
importing the attack registry: the site runs no attack code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from gauntlet.benchmark.results import write_json

CATALOG_FILE = "attacks.json"


def attack_catalog() -> dict[str, dict[str, Any]]:
    """attack id → {summary, params, gradient_free, needs_reparameterization, traits, floors}
    (``floors``: budget parameter → the lowest value an override may set, :mod:`gauntlet.attacks.budgets`)."""
    from gauntlet.attacks.base import ATTACKS
    from gauntlet.attacks.registry import attack_ids, make_attack

    out = {}
    for attack_id in attack_ids():
        cls = ATTACKS.get(attack_id)
        out[attack_id] = {"summary": cls.summary, "params": make_attack(attack_id).describe()["params"],
                          "gradient_free": bool(cls.gradient_free),
                          "needs_reparameterization": bool(cls.needs_reparameterization),
                          "traits": dict(cls.traits()), "floors": dict(cls.FLOORS)}
    return out


def write_catalog(results_dir: Path) -> Path:
    """Atomically write the current registry's catalog beside the results."""
    return write_json(Path(results_dir) / CATALOG_FILE, {"attacks": attack_catalog()}, sort_keys=False)


def fallback_catalog(results_dir: Path) -> dict[str, dict[str, Any]] | None:
    """For the benchmark's own readers (``gauntlet leaderboard``, ``report``, the run
    summary): None when the folder has its ``attacks.json`` (the leaderboard reads it),
    else the current registry's catalog, for folders written before that file existed."""
    return None if (Path(results_dir) / CATALOG_FILE).is_file() else attack_catalog()
