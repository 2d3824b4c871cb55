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


# ---- servers on loopback: an S3-compatible store (moto) and a Ray cluster -------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 server in this process on 127.0.0.1. Its buckets live in moto's in-process
    backend, so `stop()` then `start()` (same port) models an outage that loses nothing."""

    def __init__(self) -> None:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None

    @property
    def env(self) -> dict[str, str]:
        # Keys in the environment end the credential search there: nothing asks the instance
        # metadata address, and every request goes to the endpoint on loopback.
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_MAX_ATTEMPTS": "2",  # an outage fails in seconds, not after minutes of retries
            "NO_PROXY": "127.0.0.1",
            "no_proxy": "127.0.0.1",
        }

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def keys(self, bucket: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The store, with this process's environment pointed at it (fsspec reads it from there)."""
    from latent2mp4 import storage

    if s3_server.server is None:  # a test stopped it
        s3_server.start()
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    storage.filesystem.cache_clear()  # a fresh s3fs client that reads the environment
    yield s3_server
    storage.filesystem.cache_clear()
