"""Issue 13: the cascade and per-example random streams change the work, never the result.

Truths nobody tuned: SplitMix64's published output function, the independence of an
example's attack from the examples beside it (bitwise), and the equality of the
per-example worst case and the flags with and without the cascade on committed
reference submissions.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gauntlet.attacks.base import AttackContext
from gauntlet.attacks.registry import attack_ids, make_attack, make_attack_unchecked
from gauntlet.benchmark import cascade
from gauntlet.benchmark.flags import worst_case_accuracy
from gauntlet.benchmark.runner import RunConfig, run
from gauntlet.benchmark.streams import RowStreams, _signed, fork, mix, rand, randint, randn, signs
from gauntlet.benchmark.threats import get_threat

ROOT = Path(__file__).resolve().parent.parent
MASK = (1 << 64) - 1


def _splitmix_reference(z: int) -> int:
    """SplitMix64's output function (Steele, Lea & Flood 2014), in Python integers."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_mix_is_splitmix64():
    values = [0, 1, 2, 12345, 2 ** 63 - 1, 2 ** 63, 2 ** 63 + 5, MASK]
    got = mix(torch.tensor([_signed(v) for v in values], dtype=torch.int64))
    assert [int(g) & MASK for g in got.tolist()] == [_splitmix_reference(v) for v in values]


def test_an_examples_draws_depend_on_its_key_and_history_only():
    keys = [10, 20, 30, 40]
    whole = RowStreams(7, keys)
    a = rand(whole, (4, 5))
    b = rand(RowStreams(7, [30, 10]), (2, 5))  # other batch, other order
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    # a view shares the counters: rows that drew once more are one draw ahead
    s = RowStreams(7, keys)
    rand(s.rows([0, 2]), (2, 5))
    c = rand(s, (4, 5))
    t = RowStreams(7, keys)
    rand(t, (4, 5))
    d = rand(t, (4, 5))
    assert torch.equal(c[0], d[0]) and torch.equal(c[2], d[2]) and torch.equal(c[1], a[1])
    assert not torch.equal(rand(RowStreams(8, keys), (4, 5)), a)  # the seed matters
    assert not torch.equal(a[0], a[1])  # so does the key


def test_forks_are_fresh_streams():
    s = RowStreams(0, [1, 2])
    f1, f2 = fork(s, 3), fork(s, 3)
    u1, u2 = rand(f1, (6, 4)), rand(f2, (6, 4))
    assert not torch.equal(u1, u2)
    assert len({tuple(r.tolist()) for r in u1}) == 6  # six distinct streams
    # rows of example i in x.repeat(k) order: j·n + i
    again = rand(fork(RowStreams(0, [2]), 3), (3, 4))
    assert torch.equal(again, u1[[1, 3, 5]])


def test_draws_have_the_right_distributions():
    s = RowStreams(0, range(400))
    n = 400 * 1000
    u = rand(s, (400, 1000))
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 5 * (1 / 12) ** 0.5 / n ** 0.5
    assert abs(float(u.var()) - 1 / 12) < 0.002
    z = randn(s, (400, 1000)).double()
    assert abs(float(z.mean())) < 5 / n ** 0.5 and abs(float(z.var()) - 1) < 0.01
    assert abs(float((z ** 4).mean()) - 3) < 0.05
    i = randint(s, 3, 9, (400, 1000))
    counts = torch.bincount(i.flatten(), minlength=9)[3:].double()
    assert int(i.min()) == 3 and int(i.max()) == 8
    assert float(((counts - n / 6) ** 2 / (n / 6)).sum()) < 30  # χ², 5 d.o.f. (p ≈ 1e-5)
    g = signs(s, (400, 250))
    assert set(g.unique().tolist()) == {-1.0, 1.0} and abs(float(g.mean())) < 5 / (400 * 250) ** 0.5


@pytest.fixture(scope="module")
def standard():
    from gauntlet.benchmark.datasets import get_dataset
    from gauntlet.benchmark.registry import build_defense, load_submission

    defense = build_defense(load_submission(ROOT / "submissions" / "standard-cnn-mnist" / "manifest.yaml"),
                            torch.device("cpu"))
    ds = get_dataset("mnist-embedded")
    x, y = ds.split("test")
    idx = ds.eval_indices(6, None)
    return defense, x[idx], y[idx], torch.tensor(idx)


@pytest.mark.parametrize("sub_id", ["standard-cnn-mnist", "standard-cifar10", "buckman2018-thermometer-cifar10"])
def test_the_adaptive_views_passes_do_not_depend_on_the_batch_size(sub_id):
    """Bitwise: the view's logits and gradients for an example are the same in a pass of any
    size from 1 to 40 as in one of 100 (MIN_ROWS_PER_PASS pads the small ones), for the
    zoo's SmallCNN, ResNet-9 and thermometer ResNet-9 behind BPDA."""
    from gauntlet.attacks.adaptive import AdaptiveView, evaluate
    from gauntlet.benchmark.datasets import get_dataset, unavailable
    from gauntlet.benchmark.registry import build_defense, load_submission
    from tests.conftest import SHARED_DATA

    sub = load_submission(ROOT / "submissions" / sub_id / "manifest.yaml")
    data_dir = None if sub.manifest.dataset == "mnist-embedded" else SHARED_DATA
    if data_dir is not None and unavailable(sub.manifest.dataset, data_dir):
        pytest.skip(f"{sub.manifest.dataset} files not found in {data_dir}")
    x, y = get_dataset(sub.manifest.dataset).split("test", data_dir)
    x, y = x[:100], y[:100]
    view = AdaptiveView(build_defense(sub, torch.device("cpu")), bpda=True)
    whole = evaluate(view, x, y)
    for n in range(1, 41):
        part = evaluate(view, x[:n], y[:n])
        assert torch.equal(part.logits, whole.logits[:n]) and torch.equal(part.grad, whole.grad[:n]), n


@pytest.mark.parametrize("attack_id, params", [
    ("pgd", {"steps": 6}), ("fgsm", {}), ("apgd-ce", {"steps": 6}), ("apgd-dlr", {"steps": 6}),
    ("apgd-t", {"steps": 4, "n_target_classes": 2}), ("square", {"n_queries": 40}), ("random", {"samples": 30}),
    ("spsa", {"iterations": 3, "samples": 8}), ("transfer", {"steps": 6}),
])
def test_an_examples_attack_does_not_depend_on_the_examples_beside_it(standard, attack_id, params):
    """Bitwise: what an attack returns for an example is the same in a batch of six, in a
    batch of three and alone (deterministic defense), so dropping broken examples (early
    exit, the cascade) changes no other example's result."""
    defense, x, y, keys = standard
    attack = make_attack_unchecked(attack_id, **params)
    threat = get_threat("linf-0.1")

    def attack_rows(rows: list[int]) -> torch.Tensor:
        ctx = AttackContext(RowStreams(11, keys[rows]), surrogate=defense)
        return attack.run(defense, x[rows], y[rows], threat, ctx).x_adv

    whole = attack_rows(list(range(6)))
    for rows in ([0, 3, 5], [4], [5, 1]):
        assert torch.equal(attack_rows(rows), whole[rows]), rows


def test_cascade_order_reads_traits():
    baselines, order = cascade.order([make_attack(a) for a in attack_ids()])
    assert {a.id for a in baselines} == {"pgd", "fgsm", "pgd-blind"}
    kinds = [(a.gradient_free, a.random_sampling) for a in order]
    first_black = next(i for i, (free, _) in enumerate(kinds) if free)
    assert not any(free for free, _ in kinds[:first_black]) and all(free for free, _ in kinds[first_black:])
    assert kinds[first_black] == (True, True)  # random sampling first among the black-box attacks
    white = [a for a in order if not a.gradient_free]
    assert [a.budget() for a in white] == sorted(a.budget() for a in white)


def test_still_robust_skips_what_is_broken_outright_only():
    recs = [{"per_example": {"robust_correct": [1.0, 0.0, 0.3, None, 0.0]}},
            {"per_example": {"robust_correct": [None, None, 1.0, 0.0, None]}}]
    # a randomized defense's 0.3 is not broken outright; a clean error is never a candidate
    assert cascade.still_robust([1.0, 1.0, 1.0, 1.0, 0.0], recs) == [True, False, True, False, False]


def test_worst_case_accuracy_skips_null_scores():
    recs = [{"per_example": {"robust_correct": [1.0, 0.0, 1.0, 1.0]}},
            {"per_example": {"robust_correct": [0.0, None, None, 1.0]}}]
    assert worst_case_accuracy(recs) == pytest.approx(0.5)


ATTACKS = ("pgd", "fgsm", "pgd-bpda", "apgd-ce", "apgd-dlr", "random", "transfer")


def _run(tmp: Path, mode: str, defenses, attacks, threats, n) -> Path:
    out = tmp / mode
    summary = run(RunConfig(submissions_dir=ROOT / "submissions", defenses=defenses, attacks=attacks,
                            threats=threats, n_examples=n, sweep=False, certify=False, results_dir=out,
                            isolate=False, workers=1, cascade=mode == "cascade"), progress=False)
    assert summary.errors == []
    return out


def _worst_and_flags(root: Path) -> dict:
    out: dict = {}
    for folder in sorted(p for p in root.glob("*/*/*") if p.is_dir()):
        recs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.stem != "flags"]
        rows = [r["per_example"]["robust_correct"] for r in recs]
        worst = [min(v for v in col if v is not None) for col in zip(*rows)]
        flags_file = folder / "flags.json"
        flags = json.loads(flags_file.read_text())["flags"] if flags_file.exists() else []
        out[str(folder.relative_to(root))] = (worst, [(f["id"], f["raised"], f["numbers"]) for f in flags])
    return out


def _compare(tmp_path, defenses, attacks, threats, n):
    cascaded = _run(tmp_path, "cascade", defenses, attacks, threats, n)
    full = _run(tmp_path, "full", defenses, attacks, threats, n)
    got, want = _worst_and_flags(cascaded), _worst_and_flags(full)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key][0] == want[key][0], key  # the per-example worst case, exactly
        assert got[key][1] == want[key][1], key  # every flag and its numbers
    skipped = sum(json.loads(p.read_text())["summary"].get("skipped_by_cascade", 0)
                  for p in cascaded.rglob("*.json") if p.stem not in ("flags", "manifest", "attacks"))
    assert skipped > 0  # the cascade did save work
    return cascaded


def test_the_cascade_gives_the_full_runs_worst_case_and_flags(tmp_path):
    """Deterministic reference defenses, a differentiable one and a BPDA one, at ℓ∞ 0.1
    (where attacks break some examples and not others)."""
    cascaded = _compare(tmp_path, ("standard-cnn-mnist", "buckman2018-thermometer-at"), ATTACKS,
                        ("linf-0.1",), 20)
    # the record says what the cascade did
    rec = json.loads((cascaded / "mnist-embedded" / "standard-cnn-mnist" / "linf-0.1" / "apgd-dlr.json")
                     .read_text())
    pe, s = rec["per_example"], rec["summary"]
    assert len(rec["config"]["cascade"]) == 20
    assert s["attacked"] == sum(pe["attacked"]) and s["skipped_by_cascade"] == sum(v is None for v in pe["robust_correct"])
    for i, a in enumerate(pe["attacked"]):
        assert (pe["robust_correct"][i] is None) == (not a and pe["clean_correct"][i] > 0)
    # the site reads it: "broken among those still robust"
    from gauntlet.leaderboard.board import load_board
    from gauntlet.leaderboard.details import attack_table

    table = attack_table(load_board(cascaded), "mnist-embedded", "standard-cnn-mnist", "linf-0.1")
    row = table.set_index("attack").loc["apgd-dlr"]
    assert row["skipped"] == s["skipped_by_cascade"] and row["attacked"] == s["attacked"]
    assert row["robust_accuracy"] is None or row["robust_accuracy"] != row["robust_accuracy"]  # None/NaN
    assert row["robust_among_attacked"] == pytest.approx(s["robust_among_attacked"])
    assert table.set_index("attack").loc["pgd", "skipped"] == 0


@pytest.mark.slow
def test_the_cascade_gives_the_full_runs_worst_case_with_every_attack(tmp_path):
    """Every registered attack, five deterministic reference defenses (undefended,
    adversarially trained, BPDA thermometer, Na et al.'s cascade, the LID detector), at
    ℓ∞ 0.1 and ℓ2 0.005."""
    _compare(tmp_path, ("standard-cnn-mnist", "madry2018-pgd-at", "buckman2018-thermometer-at",
                        "na2018-cascade-at", "ma2018-lid"), (), ("linf-0.1", "l2-0.005"), 20)
