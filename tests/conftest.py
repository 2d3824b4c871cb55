"""Shared fixtures: real latent files on disk and a CLI runner that reports exit code and output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from latent2mp4.cli import app


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No test may reach the network or a user's real Hugging Face cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli():
    runner = CliRunner()

    def run(*args: str | Path) -> Run:
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Run(result.exit_code, result.stdout, result.stderr)

    return run


def latents(
    shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def assert_one_line_error(run: Run, code: int, *fragments: str) -> None:
    assert run.exit_code == code, run.output
    assert "Traceback" not in run.output
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error:"), lines
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def whole(view) -> torch.Tensor:
    """Every selected video of a `LatentView` as one `(S, B, C, T, h, w)` tensor (test oracle)."""
    s, b, _, t = view.shape[:4]
    return torch.stack([torch.cat([view.read(p, i, 0, t) for i in range(b)]) for p in range(s)])
