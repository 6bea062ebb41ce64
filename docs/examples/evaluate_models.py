"""A notebook's worth of Gauntlet: evaluate two models, read the report, make a submission.

Run it from anywhere after ``pip install -e .`` (CI runs it on the embedded digits):

    python docs/examples/evaluate_models.py [--n 16] [--out DIR]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import gauntlet
from gauntlet.defenses.models import SmallCNN

REPO = Path(__file__).resolve().parents[2]


def load(submission: str) -> torch.nn.Module:
    """A reference model of the repository: the class and its committed weights."""
    model = SmallCNN()
    model.load_state_dict(torch.load(REPO / "submissions" / submission / "weights.pt", weights_only=True))
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16, help="examples of the embedded digits' evaluation slice")
    p.add_argument("--out", type=Path, default=None, help="where the reports and the submission go")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gauntlet-example-"))
    # A few attacks keep the example to seconds; attacks=() (the default) runs every one.
    attacks = ("fgsm", "pgd", "apgd-ce")

    reports = {}
    for sid in ("standard-cnn-mnist", "madry2018-pgd-at"):
        # id= names the submission the numbers are recorded under (the seeds derive from it)
        reports[sid] = gauntlet.evaluate(load(sid), dataset="mnist-embedded", n=args.n, attacks=attacks,
                                         threats=("linf-0.031", "linf-0.1"), id=sid, workdir=out / sid,
                                         progress=False)
        print(reports[sid], "\n")

    madry = reports["madry2018-pgd-at"]
    print(madry.attacks[["threat", "attack", "robust_accuracy", "robust_accuracy_ci_low",
                         "robust_accuracy_ci_high"]].to_string(index=False), "\n")
    raised = madry.flags[madry.flags["raised"]]
    print("flags raised:", ", ".join(raised["flag"]) or "none")
    print("per-defense page:", madry.to_html(out / "site"))

    folder = madry.to_submission(out / "submissions" / "madry2018-pgd-at", name="PGD adversarial training",
                                 authors=["A. Researcher"], notes="Written by docs/examples/evaluate_models.py")
    print("submission folder:", folder)
    print("reproduce with:", madry.reproduce_command(out / "submissions"))


if __name__ == "__main__":
    main()
