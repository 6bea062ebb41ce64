"""The manifest-free attack registry: every attack module imported once, in run order.

Order matters only for display; every attack runs on every defense (DESIGN.md).
"""
from __future__ import annotations

import importlib

from attacks.base import ATTACKS, Attack

#: Modules whose import registers attacks, in display order.
ATTACK_MODULES = (
    "attacks.pgd",
    "attacks.apgd",
    "attacks.square",
    "attacks.spsa",
    "attacks.transfer",
    "attacks.random_search",
    "attacks.reparam",
)

_loaded = False


def _load() -> None:
    global _loaded
    if not _loaded:
        for name in ATTACK_MODULES:
            importlib.import_module(name)
        _loaded = True


def attack_ids() -> list[str]:
    """Every registered attack id."""
    _load()
    return ATTACKS.ids()


def make_attack(attack_id: str, **overrides) -> Attack:
    """An attack instance with its defaults, or the given parameter overrides.

    Raises:
        KeyError: unknown id, with close names.
        ValueError: unknown parameter.
    """
    _load()
    return ATTACKS.get(attack_id)(**overrides)
