"""The documented example runs as written (docs/api.md), outside the checkout."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_api_example_evaluates_both_models_and_writes_a_submission(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / "evaluate_models.py"), "--n", "8",
                          "--out", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "standard-cnn-mnist on mnist-embedded" in out.stdout and "madry2018-pgd-at on mnist-embedded" in out.stdout
    assert "gauntlet run --submissions" in out.stdout
    assert (tmp_path / "out" / "submissions" / "madry2018-pgd-at" / "manifest.yaml").is_file()
