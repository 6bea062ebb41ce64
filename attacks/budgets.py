"""Budget floors: how far a manifest's ``attack_overrides`` may lower an attack's budget.

A defense whose forward pass is expensive may run an attack at a reduced budget, with a
reason shown on the site. What it may change is declared on the attack class, not here:
:attr:`gauntlet.attacks.base.Attack.FLOORS` maps each *budget parameter* (a count of iterations,
queries, draws or targets) to the lowest value an override may give it. The rules, in
one place, for ``gauntlet validate`` (:func:`gauntlet.attacks.registry.override_problems`) and
for the runner (:func:`gauntlet.attacks.registry.make_attack` raises on the same problems):

* only budget parameters can be overridden: a step size, a loss, a schedule or a start
  changes the attack, not its cost (``step_size: 0`` would switch PGD off);
* a value lies between the floor and the registry default: an override lowers a budget,
  it never raises one, and it never goes below the floor;
* an attack whose every floor equals its default always runs at its full budget and
  cannot be overridden at all; an override must change something, and names each
  attack once.

What always runs at full budget follows from the floors and the applicability rule
(:mod:`gauntlet.benchmark.applicability`), with no list of ids anywhere: APGD-CE declares every
floor at its default and applies to every defense (it needs no fact), so the
full-budget APGD-CE runs against every defense; ``random`` (trait ``gradient_free``,
no applicability condition) does too, so at least one full-budget black-box attack
always runs, and ``transfer`` joins it wherever the project declares a surrogate
(:mod:`gauntlet.benchmark.surrogates`). Square and SPSA, the score-based searches, may be cut to
their floors: they only run against deterministic defenses, so they could not carry
that guarantee anyway. ``tests/test_budget_floors.py`` checks all of this over the
registry.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from gauntlet.attacks.base import ATTACKS, Attack


def defaults(cls: type[Attack]) -> dict[str, Any]:
    """The registry defaults of an attack class's parameters."""
    return {f.name: f.default for f in dataclasses.fields(cls.Params)}


def full_budget(cls: type[Attack]) -> bool:
    """True when no override can lower any budget of ``cls`` (every floor is its default,
    or it declares none): it always runs at its registry budget."""
    d = defaults(cls)
    return all(d[name] == floor for name, floor in cls.FLOORS.items())


def param_problems(attack_id: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems of one override of ``attack_id``, as (field, reason) pairs.

    Args:
        attack_id: a registered attack id.
        params: the parameters the override sets.

    Returns:
        ``("attack", reason)`` when the attack cannot be overridden, ``("params", reason)``
        when the override changes nothing, ``("params.<name>", reason)`` per bad value;
        empty when the override is allowed.

    Raises:
        KeyError: unknown attack id (with close names; the registry must be loaded:
            :mod:`gauntlet.attacks.registry` calls this).
    """
    cls = ATTACKS.get(attack_id)
    if full_budget(cls):
        return [("attack", f"{attack_id} always runs at its full budget (every budget parameter's floor is its "
                           "default); it cannot be overridden")]
    d, floors = defaults(cls), cls.FLOORS
    out: list[tuple[str, str]] = []
    lowerable = ", ".join(f"{k} (floor {_fmt(v)})" for k, v in floors.items() if v != d[k])
    for name, value in params.items():
        where = f"params.{name}"
        if name not in d:
            close = difflib.get_close_matches(str(name), list(d), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            out.append((where, f"unknown parameter of {attack_id}{hint} (known: {', '.join(d)})"))
        elif name not in floors or floors[name] == d[name]:
            out.append((where, f"not a budget parameter {attack_id} lets an override lower; "
                               f"it may lower only: {lowerable}"))
        elif not _same_type(value, d[name]):
            out.append((where, f"{value!r} is not {'an integer' if isinstance(d[name], int) else 'a number'}"))
        elif value < floors[name]:
            out.append((where, f"{_fmt(value)} is below the floor {_fmt(floors[name])} of {attack_id} "
                               f"(default {_fmt(d[name])})"))
        elif value > d[name]:
            out.append((where, f"{_fmt(value)} is above the default {_fmt(d[name])}: an override only "
                               "lowers a budget"))
    if not out and all(d.get(k) == v for k, v in params.items()):
        out.append(("params", f"changes no budget of {attack_id} (it may lower: {lowerable})"))
    return out


def check_override(attack_id: str, params: dict[str, Any]) -> None:
    """Raise unless ``params`` is an allowed override of ``attack_id``.

    Raises:
        KeyError: unknown attack id.
        ValueError: every problem of :func:`param_problems`, on one line.
    """
    problems = param_problems(attack_id, params)
    if problems:
        raise ValueError(f"attack {attack_id}: " + "; ".join(f"{w}: {why}" for w, why in problems))


def _same_type(value: Any, default: Any) -> bool:
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    return isinstance(value, (int, float))


def _fmt(v: Any) -> str:
    return format(v, ".4g") if isinstance(v, float) else str(v)
