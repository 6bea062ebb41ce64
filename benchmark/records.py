"""The result-file schema: typed models of the four record kinds, checked on write and on read.

The schema's single source (docs/results.md describes it and its value rules): the
writer (:func:`gauntlet.benchmark.results.write_result`) and every reader (through
:func:`gauntlet.benchmark.results.read_result`) call :func:`validate`, which fails with one line
``<file>: <field>: <reason>``. Values are checked, not only structure, because a reader
that coerces shows a wrong number instead of failing: ``float("1")`` is 100%, ``5.0`` is
500%, NaN drops out of a ranking. Fields the models do not know pass unchecked (a newer
writer may add some); schema-1 files (``tests/fixtures/results-v1``) keep loading.
"""
from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from typing import Annotated, Any, Iterator, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, StrictBool, ValidationError


#: 2: attack traits, 95% intervals (``*_ci``), ``adv_correct``/``adv_survives`` and the
#: reject-as-win/-as-error figures, defense facts ``abstains``/``zero_gradients``, and a
#: config hash over the whole harness source and the submission folder.
SCHEMA_VERSION = 2
#: Schema versions this reader still understands (old files must keep loading).
READABLE_SCHEMAS = (1, 2)
KINDS = ("attack", "flags", "certify", "error")
#: Job kinds of an error record (``job.kind``).
JOB_KINDS = ("prepare", "attack", "certify", "flags")
#: Error kinds (``error.kind``), as :mod:`gauntlet.benchmark.isolation` reports them.
ERROR_KINDS = ("timeout", "memory", "crash", "exception")


class ResultError(RuntimeError):
    """A result file is missing, unreadable, of an unknown schema or holds a value the
    schema does not allow; the message is one line naming the file (and the field)."""


class _Problem(Exception):
    """A value that breaks a rule the models cannot state (a length, a null's place)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


# -- value types ---------------------------------------------------------------------------

def _ordered(ci: tuple[float, float]) -> tuple[float, float]:
    if ci[0] > ci[1]:
        raise ValueError(f"interval low {ci[0]} above high {ci[1]}")
    return ci


def _radius(v: Any) -> Any:
    """A finite non-negative number, or ``"inf"`` (an unbounded threat)."""
    if v == "inf" and isinstance(v, str):
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f'expected a finite number >= 0 or "inf" (got {_short(v)})')
    return v


#: An accuracy, rate, score or interval bound: a finite JSON number in [0, 1].
Fraction = Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)]
#: A per-example score that is null where the cascade skipped the example.
Score = Fraction | None
#: A 0/1 outcome (an integer).
Binary = Annotated[int, Field(strict=True, ge=0, le=1)]
Count = Annotated[int, Field(strict=True, ge=0)]
Positive = Annotated[int, Field(strict=True, ge=1)]
#: A norm, radius or duration: finite and non-negative.
Length = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Radius = Annotated[Any, PlainValidator(_radius)]
Interval = Annotated[tuple[Fraction, Fraction], AfterValidator(_ordered)]
Id = Annotated[str, Field(strict=True, min_length=1)]
Text = Annotated[str, Field(strict=True)]
Hex = Annotated[str, Field(strict=True, pattern=r"^[0-9a-f]{64}$")]
Flag = StrictBool
#: ``x: T = ABSENT``: the field may be missing, but when present it must be a T (null
#: included only when T allows it); pydantic does not validate defaults.
ABSENT: Any = None


class _Model(BaseModel):
    # Unknown fields are ignored, not rejected: a newer writer may add some. The record
    # is returned as read, so nothing is dropped.
    model_config = ConfigDict(extra="ignore", frozen=True)


# -- common fields -------------------------------------------------------------------------

class Dataset(_Model):
    """``dataset``: the evaluation slice."""

    id: Id
    n: Count
    indices: list[Count]


class Defense(_Model):
    """``defense``: what was evaluated."""

    id: Id
    name: Text
    manifest_sha256: Text
    weights_sha256: dict[str, Text]
    randomized: Flag
    rejects: Flag
    facts: dict[str, Flag] = ABSENT


class Timing(_Model):
    """``timing``."""

    wall_seconds: Length
    finished_at: Text


class Environment(_Model):
    """``environment``: commit, dirty flag, machine and library versions."""

    commit: Text | None = None
    dirty: Flag | None = None
    device: Text | None = None
    device_name: Text | None = None
    python: Text | None = None
    torch: Text | None = None
    numpy: Text | None = None
    scipy: Text | None = None
    platform: Text | None = None
    threads: Count | None = None


class Threat(_Model):
    """``threat``: a threat model as recorded (``ThreatModel.describe``)."""

    id: Id
    norm: Literal["linf", "l2"]
    eps: Radius
    raw_radius: Radius
    dim: Positive


class IntervalInfo(_Model):
    """``summary.interval``: how every ``*_ci`` was computed."""

    level: Fraction
    method: Text


class Record(_Model):
    """The fields common to every kind."""

    run_id: Id
    config_hash: Hex
    config: dict[str, Any]
    profile: Text
    seed: Annotated[int, Field(strict=True)]
    dataset: Dataset
    defense: Defense
    timing: Timing
    environment: Environment

    def check(self) -> None:
        """Raise _Problem for a rule across fields."""
        if self.dataset.n != len(self.dataset.indices):
            raise _Problem("dataset.n", f"{self.dataset.n} but dataset.indices has {len(self.dataset.indices)} entries")

    def _same_n(self, summary_n: int) -> None:
        if summary_n != self.dataset.n:
            raise _Problem("summary.n", f"{summary_n} but dataset.n is {self.dataset.n}")

    def _lengths(self, prefix: str, arrays: dict[str, list | None]) -> None:
        for key, values in arrays.items():
            if values is not None and len(values) != self.dataset.n:
                raise _Problem(f"{prefix}.{key}", f"{len(values)} entries for dataset.n = {self.dataset.n}")


# -- kind = attack ---------------------------------------------------------------------------

class AttackSpec(_Model):
    """``attack``: the attack, its parameters and traits."""

    id: Id
    params: dict[str, Any]
    summary: Text = ABSENT
    traits: dict[str, Flag] = ABSENT
    override_reason: Text | None = None
    gradient_free: Flag = ABSENT  # schema 1


#: Per-example scores that are null where the cascade skipped the example.
NULLABLE = ("robust_correct", "robust_correct_reject_as_win", "robust_correct_reject_as_error", "adv_correct",
            "adv_survives", "robust_correct_worst", "perturbation_norm", "adv_rejected")


class AttackScores(_Model):
    """``per_example`` of an attack record, aligned with ``dataset.indices``."""

    clean_correct: list[Fraction]
    attacked: list[Flag] = ABSENT
    robust_correct: list[Score]
    robust_correct_reject_as_win: list[Score] = ABSENT
    robust_correct_reject_as_error: list[Score] = ABSENT
    adv_correct: list[Score] = ABSENT
    adv_survives: list[Score] = ABSENT
    robust_correct_worst: list[Binary | None]
    perturbation_norm: list[Length | None] = ABSENT
    clean_rejected: list[Fraction] = ABSENT
    adv_rejected: list[Score] = ABSENT

    def arrays(self) -> dict[str, list | None]:
        """Every per-example array by name (None: absent)."""
        return {key: getattr(self, key) for key in type(self).model_fields}

    def check_nulls(self) -> None:
        """A score is null only where the example was not attacked (the cascade skipped it)."""
        for key in NULLABLE:
            values = getattr(self, key)
            if values is None or None not in values:
                continue
            i = values.index(None) if self.attacked is None else next(
                (i for i, v in enumerate(values) if v is None and self.attacked[i]), None)
            if i is not None:
                why = "no per_example.attacked" if self.attacked is None else f"per_example.attacked[{i}] is true"
                raise _Problem(f"per_example.{key}[{i}]", f"null, but {why} (only a skipped example has no score)")


class AttackSummary(_Model):
    """``summary`` of an attack record: every figure in [0, 1], intervals ordered."""

    n: Count
    interval: IntervalInfo = ABSENT
    attacked: Count = ABSENT
    skipped_by_cascade: Count = ABSENT
    robust_among_attacked: Fraction | None = None
    robust_among_attacked_ci: Interval | None = None
    clean_accuracy: Fraction
    clean_accuracy_ci: Interval | None = None
    robust_accuracy: Fraction
    robust_accuracy_ci: Interval | None = None
    robust_accuracy_worst_of_draws: Fraction = ABSENT
    robust_accuracy_worst_of_draws_ci: Interval | None = None
    clean_rejection_rate: Fraction = ABSENT
    clean_rejection_rate_ci: Interval | None = None
    adv_rejection_rate: Fraction = ABSENT
    adv_rejection_rate_ci: Interval | None = None
    robust_accuracy_reject_as_win: Fraction = ABSENT
    robust_accuracy_reject_as_win_ci: Interval | None = None
    robust_accuracy_reject_as_error: Fraction = ABSENT
    robust_accuracy_reject_as_error_ci: Interval | None = None


class AttackRecord(Record):
    """``kind: "attack"``."""

    attack: AttackSpec
    threat: Threat
    draws: Positive
    per_example: AttackScores
    summary: AttackSummary
    info: dict[str, Any] = ABSENT

    def check(self) -> None:
        super().check()
        self._lengths("per_example", self.per_example.arrays())
        self.per_example.check_nulls()
        s = self.summary
        self._same_n(s.n)
        if (s.attacked or 0) + (s.skipped_by_cascade or 0) > s.n:
            raise _Problem("summary.attacked", f"{s.attacked} attacked + {s.skipped_by_cascade} skipped > n = {s.n}")


# -- kind = flags ----------------------------------------------------------------------------

class FlagEntry(_Model):
    """One entry of ``flags``."""

    id: Id
    raised: Flag
    meaning: Text | None = None
    numbers: dict[str, Any] | None = None


class FlagsRecord(Record):
    """``kind: "flags"``."""

    threat: Threat
    flags: list[FlagEntry]


# -- kind = certify --------------------------------------------------------------------------

class CertifyScores(_Model):
    """``per_example`` of a certificate."""

    prediction: list[Annotated[int, Field(strict=True, ge=-1)]]  # -1: abstain
    radius: list[Length]
    correct: list[Binary]


class Curve(_Model):
    """``summary.curve``: certified accuracy versus ℓ2 radius."""

    radius: list[Length]
    accuracy: list[Fraction]


class CertifySummary(_Model):
    """``summary`` of a certificate."""

    n: Count
    interval: IntervalInfo = ABSENT
    clean_accuracy: Fraction
    clean_accuracy_ci: Interval | None = None
    certified_accuracy: dict[str, Fraction]
    certified_accuracy_ci: dict[str, Interval | None] = ABSENT
    curve: Curve = ABSENT


class CertifyRecord(Record):
    """``kind: "certify"``."""

    method: Id
    params: dict[str, Any] = ABSENT
    per_example: CertifyScores = ABSENT
    summary: CertifySummary
    info: dict[str, Any] = ABSENT

    def check(self) -> None:
        super().check()
        if self.per_example is not None:
            self._lengths("per_example", {k: getattr(self.per_example, k) for k in ("prediction", "radius", "correct")})
        self._same_n(self.summary.n)
        curve = self.summary.curve
        if curve is not None and len(curve.radius) != len(curve.accuracy):
            raise _Problem("summary.curve.accuracy", f"{len(curve.accuracy)} entries for {len(curve.radius)} radii")


# -- kind = error ----------------------------------------------------------------------------

class Job(_Model):
    """``job``: which job failed."""

    kind: Literal[JOB_KINDS]
    attack: Id | None = None
    threat: Id | None = None


class Failure(_Model):
    """``error``: how it failed."""

    kind: Literal[ERROR_KINDS]
    message: Text
    seconds: Length | None = None
    traceback: Text | None = None


class ErrorAttack(_Model):
    """``attack`` of an error record."""

    id: Id
    params: dict[str, Any] = ABSENT


class ErrorRecord(Record):
    """``kind: "error"``: a failed job, at the path its result would have had."""

    job: Job | None = None
    error: Failure
    attack: ErrorAttack | None = None
    threat: Threat | None = None


MODELS: dict[str, type[Record]] = {"attack": AttackRecord, "flags": FlagsRecord, "certify": CertifyRecord,
                                   "error": ErrorRecord}


# -- checking --------------------------------------------------------------------------------

def validate(record: Any, source: str, *, deep: bool = True) -> dict[str, Any]:
    """Check a result record against the schema.

    Args:
        record: the parsed JSON (or the record about to be written).
        source: the file named in an error message.
        deep: also look for NaN/±Infinity in the free-form fields (``info``, ``config``,
            flag numbers); a reader that saw no such token while parsing passes False.

    Returns:
        ``record`` itself, unchanged.

    Raises:
        ResultError: one line, ``<source>: <field>: <reason>``.
    """
    with _naming(source):
        _object(record)
        version, kind = record.get("schema_version"), record.get("kind")
        if type(version) is not int or version not in READABLE_SCHEMAS:
            raise _Problem("schema_version", f"{_short(version)} not readable (known: {list(READABLE_SCHEMAS)})")
        if not isinstance(kind, str) or kind not in KINDS:
            raise _Problem("kind", f"unknown kind {_short(kind)} (known: {list(KINDS)})")
        _model(MODELS[kind], record).check()
        if deep:
            _finite(record)
    return record


def check_model(model: type[BaseModel], data: Any, source: str) -> Any:
    """Validate a JSON object with any pydantic model, failing as :func:`validate` does
    (NaN and ±Infinity refused anywhere in it); returns the model.

    Raises:
        ResultError: one line, ``<source>: <field>: <reason>``.
    """
    with _naming(source):
        _object(data)
        out = _model(model, data)
        _finite(data)
    return out


@contextmanager
def _naming(source: str) -> Iterator[None]:
    try:
        yield
    except _Problem as p:
        raise ResultError(f"{source}: {p.path}: {p.reason}") from None


def _object(data: Any) -> None:
    if not isinstance(data, dict):
        raise _Problem("(top level)", f"expected a JSON object, got {type(data).__name__}")


def _finite(data: Any) -> None:
    where = nonfinite(data)
    if where is not None:
        raise _Problem(where, "not a finite number (NaN or Infinity)")


def _model(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise _Problem(field_path(first["loc"]), _reason(first) + more) from None


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def field_path(loc: tuple[Any, ...]) -> str:
    """``("per_example", "robust_correct", 3)`` → ``per_example.robust_correct[3]``; a key
    that is not a plain name is quoted: ``summary.certified_accuracy["linf-0.031"]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _KEY.match(str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part))}]"
    return out or "(top level)"


def _reason(error: dict[str, Any]) -> str:
    if error["type"] == "missing":
        return "missing"
    msg = str(error["msg"]).removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    value = error.get("input")
    if error["type"] != "value_error" and not isinstance(value, (dict, list)):
        msg += f" (got {_short(value)})"
    return " ".join(msg.split())


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, bool)) or value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def nonfinite(value: Any, path: tuple[Any, ...] = ()) -> str | None:
    """The field path of the first NaN or ±Infinity in a parsed record, or None."""
    for loc, v in _leaves(value, path):
        if isinstance(v, float) and not math.isfinite(v):
            return field_path(loc)
    return None


def _leaves(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path, value
