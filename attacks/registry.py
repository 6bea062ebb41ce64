"""The manifest-free attack registry: every attack module imported once, in run order.

Order matters only for display; every attack runs on every defense (DESIGN.md).
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Iterable, Protocol

from gauntlet.attacks.base import ATTACKS, Attack
from gauntlet.attacks.budgets import check_override, param_problems

#: Modules whose import registers attacks, in display order.
ATTACK_MODULES = (
    "gauntlet.attacks.pgd",
    "gauntlet.attacks.apgd",
    "gauntlet.attacks.square",
    "gauntlet.attacks.spsa",
    "gauntlet.attacks.transfer",
    "gauntlet.attacks.random_search",
    "gauntlet.attacks.reparam",
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


def make_attack(attack_id: str, /, **overrides) -> Attack:
    """An attack instance with its defaults, or with a manifest's budget overrides, which
    must respect the attack's floors (:mod:`gauntlet.attacks.budgets`): what the runner calls.

    Raises:
        KeyError: unknown id, with close names.
        ValueError: an override the budget rules refuse (unknown or non-budget
            parameter, value below the floor or above the default, a full-budget attack).
    """
    _load()
    if overrides:
        check_override(attack_id, overrides)
    return ATTACKS.get(attack_id)(**overrides)


def make_attack_unchecked(attack_id: str, /, **params) -> Attack:
    """An attack instance with any parameters, budget floors not applied: for tests and
    experiments (a 3-step APGD on a toy model). The runner never calls it.

    Raises:
        KeyError: unknown id, with close names.
        ValueError: unknown parameter.
    """
    _load()
    return ATTACKS.get(attack_id)(**params)


class _Override(Protocol):
    attack: str
    params: dict[str, Any]


def override_problems(overrides: Iterable[_Override]) -> list[str]:
    """Every problem of a manifest's ``attack_overrides``, as ``attack_overrides[i].<field>: reason``.

    Args:
        overrides: the manifest's overrides (objects with ``attack`` and ``params``).

    Returns:
        One line per problem (the caller prefixes the file); empty when all are allowed.
    """
    known = attack_ids()
    seen: dict[str, int] = {}
    out = []
    for i, o in enumerate(overrides):
        head = f"attack_overrides[{i}]"
        if o.attack not in known:
            close = difflib.get_close_matches(o.attack, known, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            out.append(f"{head}.attack: unknown attack {o.attack!r}{hint}")
            continue
        if o.attack in seen:
            out.append(f"{head}.attack: {o.attack} is already overridden in attack_overrides[{seen[o.attack]}]")
            continue
        seen[o.attack] = i
        out.extend(f"{head}.{where}: {why}" for where, why in param_problems(o.attack, dict(o.params)))
    return out
