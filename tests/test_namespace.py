"""One installed namespace: everything is ``gauntlet.…``; nothing else is importable from
outside the checkout; both spellings of a manifest's factory resolve to the same object."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gauntlet.benchmark.registry import resolve

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    # -I: no current folder, no PYTHONPATH on sys.path; what the installed package offers only
    return subprocess.run([sys.executable, "-I", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_only_gauntlet_is_importable_from_outside_the_checkout(tmp_path):
    ok = _python("import gauntlet, gauntlet.benchmark.cli, gauntlet.attacks.pgd, gauntlet.defenses.models, "
                 "gauntlet.leaderboard.site; print(gauntlet.__file__)", tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()).parent == ROOT / "gauntlet"
    for name in ("attacks", "benchmark", "defenses", "leaderboard"):
        out = _python(f"import {name}", tmp_path)
        assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, (name, out.stdout)


def test_importing_gauntlet_loads_no_torch(tmp_path):
    """Workers and sandboxes import ``gauntlet.benchmark…``: the root stays light, the API loads on use."""
    out = _python("import sys, gauntlet; print('torch' in sys.modules); gauntlet.evaluate; print('torch' in sys.modules)",
                  tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_the_command_is_the_namespaced_cli(tmp_path):
    exe = Path(sys.executable).parent / "gauntlet"
    if not exe.exists():
        pytest.skip("the gauntlet script is not installed beside this interpreter")
    out = subprocess.run([str(exe), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "validate" in out.stdout, out.stderr


@pytest.mark.parametrize("spec", ["defenses.models:SmallCNN", "gauntlet.defenses.models:SmallCNN"])
def test_both_factory_spellings_resolve_to_the_same_class(spec, tmp_path):
    from gauntlet.defenses.models import SmallCNN

    assert resolve(spec, tmp_path, "any") is SmallCNN


def test_a_submission_may_not_take_the_namespace_name(tmp_path):
    from gauntlet.benchmark.registry import locate_module

    (tmp_path / "gauntlet.py").write_text("class X: pass\n")
    path, problem = locate_module("gauntlet", tmp_path)
    assert path is None and "not allowed" in problem


def test_a_submission_module_importing_a_folder_name_gets_the_new_spelling(tmp_path):
    from gauntlet.benchmark.registry import check_factory

    (tmp_path / "net.py").write_text("from defenses.pipeline import Step\n\nclass Net(Step):\n    pass\n")
    problem = check_factory("net:Net", tmp_path)
    assert problem is not None and "'gauntlet.defenses.pipeline'" in problem
    (tmp_path / "net.py").write_text("from gauntlet.defenses.pipeline import Step\n\nclass Net(Step):\n    pass\n")
    assert check_factory("net:Net", tmp_path) is None
