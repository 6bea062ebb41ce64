"""The transfer attack's surrogate is the project's (benchmark/surrogates.py), loaded from the
repository whatever ``--submissions`` names; no submission can become it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gauntlet.benchmark import surrogates
from gauntlet.benchmark.runner import RunConfig, run
from gauntlet.benchmark.surrogates import SURROGATES, Surrogate, SurrogateError, load_surrogate

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

#: An undefended "standard-*" submission whose model cannot even be built: the old rule
#: (first valid ``standard-*`` of the dataset in the submissions folder) picked it.
HOSTILE = """schema: 1
id: standard-aaa
name: Hostile surrogate candidate
dataset: mnist-embedded
model: {factory: "trap:Model", args: {}}
properties: {randomized: false}
"""
TRAP = '''import torch


class Model(torch.nn.Module):
    def __init__(self):
        raise RuntimeError("standard-aaa was built")
'''


def _mine(tmp_path: Path) -> Path:
    """An author's own folder: one non-standard submission and a hostile ``standard-aaa``."""
    mine = tmp_path / "mine"
    shutil.copytree(FIXTURES / "submissions" / "dummy-linear", mine / "dummy-linear")
    (mine / "standard-aaa").mkdir()
    (mine / "standard-aaa" / "manifest.yaml").write_text(HOSTILE)
    (mine / "standard-aaa" / "trap.py").write_text(TRAP)
    return mine


def _run(mine: Path, results: Path):
    return run(RunConfig(submissions_dir=mine, defenses=("dummy-linear",), attacks=("fgsm", "transfer"),
                         threats=("linf-0.031",), n_examples=8, results_dir=results, sweep=False,
                         isolate=False, certify=False), progress=False)


def test_an_authors_own_folder_transfers_from_the_project_surrogate(tmp_path, monkeypatch, one_thread):
    """Before: 'attack transfer needs ctx.surrogate' and exit 1 (no standard-* in the folder),
    or the folder's own ``standard-aaa`` as the surrogate."""
    from gauntlet.benchmark import registry

    built: list[Path] = []
    real = registry.build_defense

    def spy(sub, *args, **kwargs):
        built.append(Path(sub.folder).resolve())
        return real(sub, *args, **kwargs)

    monkeypatch.setattr(registry, "build_defense", spy)
    mine = _mine(tmp_path)
    summary = _run(mine, tmp_path / "results")
    assert summary.error_records == []
    path = tmp_path / "results" / "mnist-embedded" / "dummy-linear" / "linf-0.031" / "transfer.json"
    record = json.loads(path.read_text())
    assert record["kind"] == "attack" and record["defense"]["facts"]["surrogate"] is True
    assert "surrogate_broken_fraction" in record["info"]
    assert (ROOT / SURROGATES["mnist-embedded"].folder).resolve() in built  # the surrogate, from the repo
    assert (mine / "standard-aaa").resolve() not in built


def test_a_dataset_without_a_declared_surrogate_makes_transfer_not_applicable(tmp_path, monkeypatch,
                                                                            one_thread):
    from gauntlet.leaderboard import aggregate as agg

    monkeypatch.setattr(surrogates, "SURROGATES", {})
    summary = _run(_mine(tmp_path), tmp_path / "results")
    assert summary.error_records == []
    assert not list((tmp_path / "results").rglob("transfer.json"))
    (fgsm,) = (tmp_path / "results").rglob("fgsm.json")
    assert json.loads(fgsm.read_text())["defense"]["facts"]["surrogate"] is False
    board = agg.load_board(tmp_path / "results")
    reason = agg.not_applicable_attacks(board, "mnist-embedded", "dummy-linear")["transfer"]
    assert "no surrogate" in reason
    assert "transfer" not in agg.missing_attacks(board, "mnist-embedded", "dummy-linear", "linf-0.031")


def test_the_declared_surrogates_load_and_match_their_pins():
    for dataset, spec in SURROGATES.items():
        model = load_surrogate(dataset)
        assert isinstance(model, torch.nn.Module) and not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert load_surrogate("mnist") is None  # a dataset without a declared surrogate


def _copy(tmp_path: Path, sha: str | None = None) -> dict[str, Surrogate]:
    """The reference surrogate copied under ``tmp_path``, declared with ``sha`` (default: its pin)."""
    shutil.copytree(ROOT / "submissions" / "standard-cnn-mnist", tmp_path / "standard-cnn-mnist")
    return {"mnist-embedded": Surrogate("standard-cnn-mnist", sha or SURROGATES["mnist-embedded"].weights_sha256)}


def test_a_surrogate_is_refused_when_it_is_not_what_the_project_declared(tmp_path):
    assert isinstance(load_surrogate("mnist-embedded", surrogates=_copy(tmp_path / "ok"), root=tmp_path / "ok"),
                      torch.nn.Module)
    with pytest.raises(SurrogateError, match="pins"):
        load_surrogate("mnist-embedded", surrogates=_copy(tmp_path / "pin", "0" * 64), root=tmp_path / "pin")
    with pytest.raises(SurrogateError, match="no such file"):
        load_surrogate("mnist-embedded", surrogates=SURROGATES, root=tmp_path / "absent")
    declared = _copy(tmp_path / "tampered")
    (tmp_path / "tampered" / "standard-cnn-mnist" / "weights.pt").write_bytes(b"other weights")
    with pytest.raises(SurrogateError, match="invalid.*sha256"):
        load_surrogate("mnist-embedded", surrogates=declared, root=tmp_path / "tampered")
    declared = _copy(tmp_path / "other")
    manifest = tmp_path / "other" / "standard-cnn-mnist" / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("dataset: mnist-embedded", "dataset: mnist"))
    with pytest.raises(SurrogateError, match="its dataset is 'mnist'"):
        load_surrogate("mnist-embedded", surrogates=declared, root=tmp_path / "other")


def test_no_shared_code_picks_a_model_by_id_prefix():
    for folder in ("benchmark", "attacks"):
        for path in (ROOT / folder).rglob("*.py"):
            assert '"standard-' not in path.read_text(), path
