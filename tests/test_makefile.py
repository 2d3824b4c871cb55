"""`make demo` installs only the runtime dependencies; `make test` the test extra too (dry runs)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def dry_run(target: str, venv: Path) -> str:
    proc = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_demo_installs_runtime_only_and_test_adds_the_test_extra(tmp_path):
    venv = tmp_path / "venv"
    demo = dry_run("demo", venv)
    assert "pip install -q -e .\n" in demo and "[test]" not in demo
    assert "latent2mp4 decode" in demo
    test = dry_run("test", venv)
    assert 'pip install -q -e ".[test]"' in test and "pytest" in test


def test_a_venv_made_by_demo_still_gets_the_test_extra(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / ".runtime").write_text("")  # what `make demo` leaves behind
    future = (ROOT / "pyproject.toml").stat().st_mtime + 10
    os.utime(venv / ".runtime", (future, future))
    assert "pip install" not in dry_run("demo", venv)
    test = dry_run("test", venv)
    assert 'pip install -q -e ".[test]"' in test and "torch==" not in test
    (venv / ".installed").write_text("")
    os.utime(venv / ".installed", (future + 1, future + 1))
    assert "pip install" not in dry_run("test", venv)
