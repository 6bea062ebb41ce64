"""Submission manifests (schema 1): typed, strict, frozen; errors as ``file: field: reason``.

A manifest is read with ``yaml.safe_load`` (no YAML tag executes code) into pydantic
models that reject unknown keys. Validating a manifest imports no defense code: factory
names are checked by reading the module's source (:mod:`gauntlet.benchmark.registry`).
The JSON Schema for submitters is :func:`json_schema` (``gauntlet schema``).

A manifest is untrusted input, so reading one is bounded before PyYAML builds anything
(:func:`read_manifest_bytes`, :func:`yaml_problems`): a regular file, not a symbolic
link, of at most :data:`MAX_MANIFEST_BYTES`; mappings and lists nested at most
:data:`MAX_DEPTH` deep (PyYAML's composer recurses per level: 1,000 levels is a
``RecursionError``); anchors only on plain values, so an alias can never multiply a
mapping or a list (a 600-byte "billion laughs" expands to gigabytes); and every key once
(PyYAML silently keeps the last of two).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1

#: Largest manifest file, and largest manifest once aliases are expanded (bytes / characters).
MAX_MANIFEST_BYTES = 64 * 1024
#: Deepest nesting of mappings and lists (the reference manifests need 4).
MAX_DEPTH = 20
#: Longest free-text value of a one-line field (a title, a source, a path).
MAX_LINE_CHARS = 300
#: Longest free-text paragraph (``notes``, a ``reason``).
MAX_TEXT_CHARS = 4000
#: Longest ``module:Name`` string.
MAX_FACTORY_CHARS = 200

Line = Annotated[str, Field(max_length=MAX_LINE_CHARS)]

FACTORY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
ID_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
THREAT_PATTERN = r"^(linf|l2)-([0-9]*\.?[0-9]+(e-?[0-9]+)?|inf)$"


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class Paper(_Strict):
    """The publication that introduced the defense."""

    title: str = Field(min_length=1, max_length=MAX_LINE_CHARS, description="Title of the paper.")
    url: str | None = Field(default=None, pattern=r"^https?://", max_length=2000,
                            description="Link to the paper (http or https).")
    venue: str | None = Field(default=None, max_length=MAX_LINE_CHARS,
                              description="Where it appeared, e.g. 'ICLR 2018'.")
    year: int | None = Field(default=None, ge=1900, le=2100, description="Year of publication.")


class Factory(_Strict):
    """A callable named as ``"module:Name"`` with keyword arguments."""

    factory: str = Field(pattern=FACTORY_PATTERN, max_length=MAX_FACTORY_CHARS,
                         description="'module:Name': <submission>/<module>.py, or a module of the project's "
                                     "defenses package ('defenses.models:SmallCNN'); nothing else.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments passed to the factory.")
    weights: str | None = Field(default=None, min_length=1, max_length=MAX_LINE_CHARS,
                                description="Path of a state_dict file inside the submission folder, loaded with weights_only=True.")
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN,
                               description="sha256 of the weights file (lower-case hex); required with weights.")


class ModelSpec(Factory):
    """The classifier and its weights."""


class DefenseSpec(_Strict):
    """Preprocessing steps applied, in order, in front of the model."""

    steps: list[Factory] = Field(default_factory=list, description="Steps, each a factory returning a gauntlet.defenses.pipeline.Step (optionally with weights).")
    factory: str | None = Field(default=None, pattern=FACTORY_PATTERN, max_length=MAX_FACTORY_CHARS,
                                description="Optional 'module:Name' wrapping (classifier, steps) into a Defense subclass.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for that wrapper.")


class Properties(_Strict):
    """What the defense declares about itself; the harness verifies it."""

    randomized: bool = Field(default=False, description="Each call draws fresh randomness (EOT applies).")
    rejects: bool = Field(default=False, description="The defense may reject inputs (last logit = reject).")


class Claim(_Strict):
    """An accuracy the authors report."""

    threat: str = Field(pattern=THREAT_PATTERN, description="Threat id of the claim, e.g. 'linf-0.3' (ℓ2 ε is per input value).")
    accuracy: float = Field(ge=0.0, le=1.0, description="Claimed robust accuracy in [0, 1].")
    source: str = Field(min_length=1, max_length=MAX_LINE_CHARS, description="Where in the paper, e.g. 'Table 2'.")
    dataset: str | None = Field(default=None, max_length=64,
                                description="Dataset of the claim when it differs from the manifest's.")
    same_model: bool = Field(default=True, description="The claim is about the submitted weights; false when the "
                             "paper's number is for another model (a larger network, another training ε): "
                             "then it is shown as context and never judged against this model's measurement.")


class SmoothingCertificate(_Strict):
    """Randomized smoothing (Cohen, Rosenfeld & Kolter 2019)."""

    method: Literal["randomized-smoothing"]
    sigma: float = Field(gt=0, description="Noise level σ in [0,1] input units.")
    n0: int = Field(default=100, ge=1, description="Samples used to pick the top class.")
    n: int = Field(default=100_000, ge=1, description="Samples used to bound p_A.")
    alpha: float = Field(default=0.001, gt=0, lt=1, description="Failure probability.")
    batch: int = Field(default=1000, ge=1, description="Noise samples per forward pass.")


class LipschitzCertificate(_Strict):
    """Lipschitz-margin certificate (Tsuzuku et al. 2018)."""

    method: Literal["lipschitz"]


Certificate = Annotated[Union[SmoothingCertificate, LipschitzCertificate], Field(discriminator="method")]


class AttackOverride(_Strict):
    """A reduced attack budget, shown on the leaderboard with its reason."""

    attack: str = Field(min_length=1, max_length=64, description="Attack id.")
    params: dict[str, Any] = Field(description="Budget parameters lowered from the attack's defaults, each at "
                                               "least the attack's floor (attacks/budgets.py; checked by "
                                               "gauntlet validate).")
    reason: str = Field(min_length=10, max_length=MAX_TEXT_CHARS, description="Why the default budget cannot run.")


class ExampleLimit(_Strict):
    """Fewer evaluation examples in one run profile, shown on the leaderboard with its reason."""

    profile: str = Field(pattern=r"^[a-z][a-z0-9-]*$", max_length=64,
                         description="Run profile it applies to, e.g. 'quick'.")
    n: int = Field(ge=1, description="At most this many test examples (the first n of the evaluation order).")
    reason: str = Field(min_length=10, max_length=MAX_TEXT_CHARS,
                        description="Why the profile's example count cannot run.")


class Train(_Strict):
    """How the weights were made: ``gauntlet train <id>`` runs it."""

    recipe: str = Field(pattern=FACTORY_PATTERN, max_length=MAX_FACTORY_CHARS,
                        description="'module:function' of the training recipe (same rules as a factory).")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the recipe.")


class Manifest(_Strict):
    """``submissions/<id>/manifest.yaml``, schema 1."""

    schema_: Literal[1] = Field(alias="schema", description="Manifest schema version (1).")
    id: str = Field(pattern=ID_PATTERN, max_length=64, description="Equal to the folder name.")
    name: str = Field(min_length=1, max_length=200, description="Display name.")
    paper: Paper | None = Field(default=None, description="The paper, if any.")
    authors: list[Line] = Field(default_factory=list, max_length=100, description="Authors of the defense.")
    dataset: str = Field(max_length=64, description="A registered dataset id, e.g. 'mnist-embedded'.")
    model: ModelSpec = Field(description="Classifier factory and weights.")
    defense: DefenseSpec | None = Field(default=None, description="Optional preprocessing pipeline.")
    properties: Properties = Field(default_factory=Properties, description="Declared properties.")
    claims: list[Claim] = Field(default_factory=list, description="Accuracies the authors report.")
    certify: Certificate | None = Field(default=None, description="A certificate to compute, if claimed.")
    attack_overrides: list[AttackOverride] = Field(default_factory=list, description="Reduced budgets, with reasons.")
    example_limits: list[ExampleLimit] = Field(default_factory=list,
                                               description="Fewer examples in a run profile, with reasons.")
    train: Train | None = Field(default=None, description="The training recipe.")
    notes: str | None = Field(default=None, max_length=MAX_TEXT_CHARS,
                              description="Free text shown on the defense's page (e.g. what was scaled).")

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("authors")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if any(not a.strip() for a in v):
            raise ValueError("author names must be non-empty")
        return v


class ManifestError(Exception):
    """One or more problems, each ``file: field: reason``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _loc(loc: tuple) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int):
            if parts:
                parts[-1] = f"{parts[-1]}[{p}]"
            else:
                parts.append(f"[{p}]")
        elif p in ("randomized-smoothing", "lipschitz") and parts and parts[-1] == "certify":
            continue
        elif p == "schema_":
            parts.append("schema")
        else:
            # A key typed by the submitter may hold anything: keep the message one line.
            text = str(p)
            parts.append(text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text))
    return ".".join(parts) or "(top level)"


def read_manifest_bytes(path: Path) -> bytes:
    """The bytes of a manifest: a regular file, not a symbolic link, within the size limit.

    A symbolic link is refused because it can name any file the runner may read (whose
    lines a YAML error would then print); a FIFO or device because reading it may never end.

    Raises:
        ManifestError: ``file: (file): reason``.
    """
    if path.is_symlink():
        raise ManifestError([f"{path}: (file): is a symbolic link; a manifest must be a regular file "
                             f"inside its submission folder"])
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)  # O_NOFOLLOW: a link swapped in after the check is refused too
    except OSError as e:
        reason = "is a symbolic link" if e.errno == errno.ELOOP else f"cannot read: {e.strerror or e}"
        raise ManifestError([f"{path}: (file): {reason}"]) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ManifestError([f"{path}: (file): not a regular file"])
        if info.st_size > MAX_MANIFEST_BYTES:
            raise ManifestError([f"{path}: (file): {info.st_size} bytes; the limit is {MAX_MANIFEST_BYTES}"])
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise ManifestError([f"{path}: (file): cannot read: {e.strerror or e}"]) from None
    finally:
        os.close(fd)
    if len(data) > MAX_MANIFEST_BYTES:  # grew after fstat
        raise ManifestError([f"{path}: (file): more than {MAX_MANIFEST_BYTES} bytes"])
    return data


@dataclass
class _Frame:
    """A mapping or list being read: where it is, for ``field`` in messages."""

    mapping: bool
    index: int = 0
    expect_key: bool = True
    key: Any = None
    first_line: dict = field(default_factory=dict)  # key -> line it first appeared on


def _field(stack: list[_Frame], key: Any = None, with_key: bool = False) -> str:
    """The dotted field of the node being read (list indices as ``[i]``)."""
    parts: list[Any] = []
    for f in stack:
        if not f.mapping:
            parts.append(f.index)
        elif not f.expect_key:
            parts.append(str(f.key))
    if with_key:
        parts.append(str(key))
    return _loc(tuple(parts))


def _scalar_key(event: yaml.ScalarEvent) -> Any:
    """The value PyYAML would build for a scalar mapping key (so ``yes`` and ``true`` collide)."""
    tag = event.tag
    if tag is None or tag == "!":
        tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, event.value, event.implicit)
    node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    try:
        key = yaml.constructor.SafeConstructor().construct_object(node)
        hash(key)
    except Exception:  # noqa: BLE001 - an unbuildable key is reported when the document is built
        return (tag, event.value)
    return key


def yaml_problems(path: Path, text: str) -> list[str]:
    """What makes ``text`` unsafe or ambiguous to build, from PyYAML's event stream.

    Reads events only (no recursion, nothing built), so it is safe on any input. Refuses
    nesting deeper than :data:`MAX_DEPTH`, anchors on mappings or lists (aliases of plain
    values are kept: a reference manifest repeats one ``reason`` that way), aliases that
    expand the manifest beyond :data:`MAX_MANIFEST_BYTES` characters, and duplicate keys.

    Returns:
        ``file: field: reason`` lines (empty: safe to build).

    Raises:
        yaml.YAMLError: ``text`` is not well-formed YAML.
    """
    problems: list[str] = []
    stack: list[_Frame] = []
    anchors: dict[str, tuple[int, Any]] = {}  # anchor -> (characters, value as a key)
    expanded = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.DocumentStartEvent):
            stack = []
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            stack.pop()
        elif isinstance(event, yaml.NodeEvent):
            line = event.start_mark.line + 1
            parent = stack[-1] if stack else None
            is_key = parent is not None and parent.mapping and parent.expect_key
            key: Any = None
            if isinstance(event, yaml.CollectionStartEvent):
                if event.anchor is not None:
                    return problems + [f"{path}: {_field(stack)}: anchor &{event.anchor} on a mapping or list "
                                       f"(line {line}); anchors are allowed only on plain values"]
                stack.append(_Frame(mapping=isinstance(event, yaml.MappingStartEvent)))
                if len(stack) > MAX_DEPTH:
                    return problems + [f"{path}: {_field(stack[:-1])}: nested deeper than {MAX_DEPTH} levels "
                                       f"(line {line})"]
                if is_key:
                    parent.key = "?"
                continue  # the node ends at its CollectionEndEvent
            if isinstance(event, yaml.AliasEvent):
                size, key = anchors.get(event.anchor, (0, event.anchor))
            else:
                size, key = len(event.value), (_scalar_key(event) if is_key or event.anchor else None)
                if event.anchor is not None:
                    anchors[event.anchor] = (size, key)
            expanded += size
            if expanded > MAX_MANIFEST_BYTES:
                return problems + [f"{path}: {_field(stack)}: aliases expand the manifest beyond "
                                   f"{MAX_MANIFEST_BYTES} characters (line {line})"]
            if is_key:
                if key in parent.first_line:
                    problems.append(f"{path}: {_field(stack, key, with_key=True)}: duplicate key {key!r} "
                                    f"at line {line} (first at line {parent.first_line[key]}); "
                                    f"YAML would silently keep only the last")
                parent.first_line.setdefault(key, line)
                parent.key = key
        else:
            continue
        if stack:  # a node of the innermost open collection is complete
            top = stack[-1]
            if top.mapping:
                top.expect_key = not top.expect_key
            else:
                top.index += 1
    return problems


def _build(path: Path, text: str) -> Any:
    try:
        problems = yaml_problems(path, text)
        if problems:
            raise ManifestError(problems)
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError([f"{path}: (yaml): {' '.join(str(e).split())}"]) from None
    except (ValueError, TypeError, OverflowError) as e:  # a scalar PyYAML cannot build: `2001-13-45`
        raise ManifestError([f"{path}: (yaml): cannot build a value: {type(e).__name__}: {e}"]) from None


def parse_manifest(path: Path, data: bytes | None = None) -> Manifest:
    """Read and type-check one manifest (no semantic checks, no imports).

    Args:
        data: the file's bytes when already read (:func:`read_manifest_bytes`).

    Raises:
        ManifestError: every problem as ``file: field: reason``.
    """
    if data is None:
        data = read_manifest_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError([f"{path}: (file): cannot read: {e}"]) from None
    loaded = _build(path, text)
    if not isinstance(loaded, dict):
        raise ManifestError([f"{path}: (top level): expected a mapping, got {type(loaded).__name__}"])
    try:
        return Manifest.model_validate(loaded)
    except ValidationError as e:
        raise ManifestError([f"{path}: {_loc(err['loc'])}: {err['msg']}" for err in e.errors()]) from None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_schema() -> dict:
    """The JSON Schema of manifests, published for submitters."""
    return Manifest.model_json_schema(by_alias=True)
