"""Submission manifests (schema 1): typed, strict, frozen; errors as ``file: field: reason``.

A manifest is read with ``yaml.safe_load`` (no YAML tag executes code) into pydantic
models that reject unknown keys. Validating a manifest imports no defense code: factory
names are checked by reading the module's source (:mod:`benchmark.registry`).
The JSON Schema for submitters is :func:`json_schema` (``gauntlet schema``).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1

FACTORY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
ID_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
THREAT_PATTERN = r"^(linf|l2)-([0-9]*\.?[0-9]+(e-?[0-9]+)?|inf)$"


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class Paper(_Strict):
    """The publication that introduced the defense."""

    title: str = Field(min_length=1, description="Title of the paper.")
    url: str | None = Field(default=None, pattern=r"^https?://", description="Link to the paper (http or https).")
    venue: str | None = Field(default=None, description="Where it appeared, e.g. 'ICLR 2018'.")
    year: int | None = Field(default=None, ge=1900, le=2100, description="Year of publication.")


class Factory(_Strict):
    """A callable named as ``"module:Name"`` with keyword arguments."""

    factory: str = Field(pattern=FACTORY_PATTERN,
                         description="'module:Name'; looked up first as <submission>/<module>.py, then as an importable module.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments passed to the factory.")
    weights: str | None = Field(default=None, min_length=1,
                                description="Path of a state_dict file inside the submission folder, loaded with weights_only=True.")
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN,
                               description="sha256 of the weights file (lower-case hex); required with weights.")


class ModelSpec(Factory):
    """The classifier and its weights."""


class DefenseSpec(_Strict):
    """Preprocessing steps applied, in order, in front of the model."""

    steps: list[Factory] = Field(default_factory=list, description="Steps, each a factory returning a defenses.pipeline.Step (optionally with weights).")
    factory: str | None = Field(default=None, pattern=FACTORY_PATTERN,
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
    source: str = Field(min_length=1, description="Where in the paper, e.g. 'Table 2'.")
    dataset: str | None = Field(default=None, description="Dataset of the claim when it differs from the manifest's.")
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

    attack: str = Field(min_length=1, description="Attack id.")
    params: dict[str, Any] = Field(description="Parameters replacing the attack's defaults.")
    reason: str = Field(min_length=10, description="Why the default budget cannot run.")


class ExampleLimit(_Strict):
    """Fewer evaluation examples in one run profile, shown on the leaderboard with its reason."""

    profile: str = Field(pattern=r"^[a-z][a-z0-9-]*$", description="Run profile it applies to, e.g. 'quick'.")
    n: int = Field(ge=1, description="At most this many test examples (the first n of the evaluation order).")
    reason: str = Field(min_length=10, description="Why the profile's example count cannot run.")


class Train(_Strict):
    """How the weights were made: ``gauntlet train <id>`` runs it."""

    recipe: str = Field(pattern=FACTORY_PATTERN, description="'module:function' of the training recipe.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the recipe.")


class Manifest(_Strict):
    """``submissions/<id>/manifest.yaml``, schema 1."""

    schema_: Literal[1] = Field(alias="schema", description="Manifest schema version (1).")
    id: str = Field(pattern=ID_PATTERN, max_length=64, description="Equal to the folder name.")
    name: str = Field(min_length=1, max_length=200, description="Display name.")
    paper: Paper | None = Field(default=None, description="The paper, if any.")
    authors: list[str] = Field(default_factory=list, description="Authors of the defense.")
    dataset: str = Field(description="A registered dataset id, e.g. 'mnist-embedded'.")
    model: ModelSpec = Field(description="Classifier factory and weights.")
    defense: DefenseSpec | None = Field(default=None, description="Optional preprocessing pipeline.")
    properties: Properties = Field(default_factory=Properties, description="Declared properties.")
    claims: list[Claim] = Field(default_factory=list, description="Accuracies the authors report.")
    certify: Certificate | None = Field(default=None, description="A certificate to compute, if claimed.")
    attack_overrides: list[AttackOverride] = Field(default_factory=list, description="Reduced budgets, with reasons.")
    example_limits: list[ExampleLimit] = Field(default_factory=list,
                                               description="Fewer examples in a run profile, with reasons.")
    train: Train | None = Field(default=None, description="The training recipe.")
    notes: str | None = Field(default=None, description="Free text shown on the defense's page (e.g. what was scaled).")

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
            parts[-1] = f"{parts[-1]}[{p}]" if parts else f"[{p}]"
        elif p in ("randomized-smoothing", "lipschitz") and parts and parts[-1] == "certify":
            continue
        elif p == "schema_":
            parts.append("schema")
        else:
            # A key typed by the submitter may hold anything: keep the message one line.
            text = str(p)
            parts.append(text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text))
    return ".".join(parts) or "(top level)"


def parse_manifest(path: Path) -> Manifest:
    """Read and type-check one manifest (no semantic checks, no imports).

    Raises:
        ManifestError: every problem as ``file: field: reason``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError([f"{path}: (file): cannot read: {e}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError([f"{path}: (yaml): {' '.join(str(e).split())}"]) from None
    if not isinstance(data, dict):
        raise ManifestError([f"{path}: (top level): expected a mapping, got {type(data).__name__}"])
    try:
        return Manifest.model_validate(data)
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
