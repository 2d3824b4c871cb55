"""The catalogue of bad inputs: each must end in one line naming the file, the right exit code,
no traceback, and nothing left under the final output name (nor a temporary file)."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import assert_one_line_error, latents
from tiny_hunyuan import make_tiny_hunyuan
from tiny_wan import make_tiny_wan

EXE = Path(sys.executable).parent / "latent2mp4"
PREVIEW = ["--decoder", "preview"]


def good(path: Path, shape=(16, 2, 4, 4)) -> Path:
    save_file({"latents": latents(shape)}, str(path))
    return path


def raw_header(path: Path, header: dict, data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.fixture(scope="module")
def wan_vae(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wan") / "vae"
    make_tiny_wan(path, "2.1")
    return path


@pytest.fixture(scope="module")
def hunyuan_vae(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hy") / "vae"
    make_tiny_hunyuan(path, "tiny")
    return path


@dataclass(frozen=True)
class Bad:
    """One catalogue row: what to make, the extra CLI arguments, the exit code, the message."""

    make: Callable[[Path], list[str]]  # writes files into tmp, returns CLI args after `decode`
    code: int
    fragment: str
    names: str = "z.safetensors"  # the file the message must name


def _latent(tmp: Path, tensor: torch.Tensor, *extra: str) -> list[str]:
    save_file({"latents": tensor}, str(tmp / "z.safetensors"))
    return [str(tmp / "z.safetensors"), "-m", "wan", *PREVIEW, *extra]


def _bytes(content: bytes) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "z.safetensors").write_bytes(content)
        return [str(tmp / "z.safetensors"), "-m", "wan", *PREVIEW]

    return make


def _truncated(tmp: Path) -> list[str]:
    f = good(tmp / "z.safetensors", (16, 3, 8, 8))
    f.write_bytes(f.read_bytes()[:-100])
    return [str(f), "-m", "wan", *PREVIEW]


def _lying_header(tmp: Path) -> list[str]:
    header = {"latents": {"dtype": "F32", "shape": [16, 2, 4, 4], "data_offsets": [0, 1 << 40]}}
    raw_header(tmp / "z.safetensors", header, b"\0" * 64)
    return [str(tmp / "z.safetensors"), "-m", "wan", *PREVIEW]


def _pickle(tmp: Path) -> list[str]:
    torch.save({"latents": torch.zeros(16, 2, 4, 4)}, tmp / "z.safetensors")
    return [str(tmp / "z.safetensors"), "-m", "wan", *PREVIEW]


def _two_tensors(tmp: Path) -> list[str]:
    save_file(
        {"a": latents((16, 1, 2, 2)), "b": latents((16, 1, 2, 2))}, str(tmp / "z.safetensors")
    )
    return [str(tmp / "z.safetensors"), "-m", "wan", *PREVIEW]


def _output_exists(tmp: Path) -> list[str]:
    (tmp / "z.mp4").write_bytes(b"precious")
    return [str(good(tmp / "z.safetensors")), "-m", "wan", *PREVIEW]


def _output_folder_is_a_file(tmp: Path) -> list[str]:
    (tmp / "blocker").write_text("a file where a folder should be")
    return [
        str(good(tmp / "z.safetensors")),
        "-m",
        "wan",
        *PREVIEW,
        "--out-dir",
        str(tmp / "blocker" / "sub"),
    ]


def _vae_folder_without_weights(tmp: Path) -> list[str]:
    (tmp / "vae").mkdir()
    (tmp / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    return [str(good(tmp / "z.safetensors")), "-m", "wan", "--vae", str(tmp / "vae")]


CATALOGUE: dict[str, Bad] = {
    "missing file": Bad(lambda t: [str(t / "z.safetensors"), "-m", "wan"], 1, "file not found"),
    "empty file": Bad(_bytes(b""), 1, "not a readable safetensors file"),
    "truncated file": Bad(_truncated, 1, "not a readable safetensors file"),
    "random bytes": Bad(_bytes(bytes(range(256)) * 4), 1, "not a readable safetensors file"),
    "header lies about offsets": Bad(_lying_header, 1, "invalid shape, data type, or offset"),
    "pickle renamed to .safetensors": Bad(_pickle, 1, "PyTorch pickle"),
    "wrong ndim": Bad(lambda t: _latent(t, torch.zeros(16, 4, 4)), 1, "expected (C,F,H,W)"),
    "wrong channel count": Bad(
        lambda t: _latent(t, torch.zeros(48, 2, 4, 4)), 1, "did you mean wan2.2"
    ),
    "integer dtype": Bad(
        lambda t: _latent(t, torch.zeros(16, 2, 4, 4, dtype=torch.int64)), 1, "int64"
    ),
    "NaN": Bad(lambda t: _latent(t, torch.full((16, 2, 4, 4), float("nan"))), 1, "NaN/Inf"),
    "Inf": Bad(lambda t: _latent(t, torch.full((16, 2, 4, 4), float("-inf"))), 1, "NaN/Inf"),
    "zero-sized dimension": Bad(
        lambda t: _latent(t, torch.zeros(16, 2, 0, 4)), 1, "empty dimension"
    ),
    "absurd frame size": Bad(
        lambda t: _latent(t, torch.zeros(16, 1, 2100, 2, dtype=torch.float16)), 1, "16384"
    ),
    "untiled decode that cannot fit": Bad(
        lambda t: [
            *_latent(t, torch.zeros(16, 1, 300, 300, dtype=torch.float16))[:3],
            "--no-tile",
            "--dtype",
            "fp32",
        ],
        1,
        "GiB",
    ),
    "missing key": Bad(
        lambda t: [*_latent(t, torch.zeros(16, 1, 2, 2)), "--key", "nope"], 1, "no tensor 'nope'"
    ),
    "ambiguous tensors": Bad(_two_tensors, 1, "--key"),
    "trajectory index out of range": Bad(
        lambda t: [*_latent(t, torch.zeros(3, 1, 16, 1, 2, 2)), "--index", "7"], 2, "out of range"
    ),
    "unknown model": Bad(
        lambda t: [str(good(t / "z.safetensors")), "-m", "sd15"], 2, "unknown model", names="sd15"
    ),
    "output exists": Bad(_output_exists, 1, "--overwrite", names="z.mp4"),
    "unwritable output folder": Bad(
        _output_folder_is_a_file, 1, "cannot create output folder", names="blocker"
    ),
    "VAE folder without weights": Bad(
        _vae_folder_without_weights, 1, "no VAE weights here", names="vae"
    ),
}


@pytest.mark.parametrize("case", list(CATALOGUE), ids=list(CATALOGUE))
def test_catalogue(tmp_path, cli, case):
    bad = CATALOGUE[case]
    args = bad.make(tmp_path)
    before = (tmp_path / "z.mp4").read_bytes() if (tmp_path / "z.mp4").exists() else None
    run = cli("decode", *args)
    assert_one_line_error(run, bad.code, bad.fragment, bad.names)
    if before is None:
        assert not list(tmp_path.rglob("*.mp4"))
    else:
        assert (tmp_path / "z.mp4").read_bytes() == before
    assert not list(tmp_path.rglob(".*partial*"))


def test_vae_weights_of_another_family(tmp_path, cli, hunyuan_vae):
    run = cli("decode", good(tmp_path / "z.safetensors"), "-m", "wan", "--vae", hunyuan_vae)
    assert_one_line_error(run, 1, "AutoencoderKLHunyuanVideo", "hunyuan")
    assert not list(tmp_path.rglob("*.mp4"))


def test_checkpoint_with_missing_keys(tmp_path, cli, wan_vae):
    state = load_file(str(wan_vae / "diffusion_pytorch_model.safetensors"))
    del state["decoder.mid_block.attentions.0.proj.weight"]
    save_file(state, str(tmp_path / "vae.safetensors"))
    run = cli(
        "decode",
        good(tmp_path / "z.safetensors"),
        "-m",
        "wan",
        "--vae",
        tmp_path / "vae.safetensors",
    )
    assert_one_line_error(
        run, 1, "lacks 1 decoder weights", "mid_block.attentions.0.proj.weight", "vae.safetensors"
    )
    assert not list(tmp_path.rglob("*.mp4"))


def test_pth_with_code_in_it_is_refused(tmp_path, cli):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"state_dict": {"decoder.x": Payload()}}, tmp_path / "vae.pth")
    run = cli(
        "decode", good(tmp_path / "z.safetensors"), "-m", "wan", "--vae", tmp_path / "vae.pth"
    )
    assert_one_line_error(run, 1, "weights-only", "vae.pth", "it pickles posix.system")
    assert not (tmp_path / "pwned").exists()


def run_exe(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, **kwargs)


def test_ffmpeg_dying_mid_stream(tmp_path):
    fake = tmp_path / "ffmpeg"
    fake.write_text(
        "#!/bin/sh\nhead -c 20000 >/dev/null\necho 'simulated encoder crash' >&2\nexit 3\n"
    )
    fake.chmod(0o755)
    f = good(tmp_path / "z.safetensors", (16, 6, 8, 8))
    proc = run_exe(
        "decode", f, "-m", "wan", *PREVIEW, env={**os.environ, "IMAGEIO_FFMPEG_EXE": str(fake)}
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "simulated encoder crash" in proc.stderr, (
        proc.stderr
    )
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*partial*"))


def test_output_on_a_full_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(disk)], capture_output=True
    )
    limit = None
    if (
        mounted.returncode != 0
    ):  # no mount rights: a file-size limit fails ffmpeg's writes the same way
        import resource

        limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))  # noqa: E731
    try:
        f = good(tmp_path / "z.safetensors", (16, 9, 32, 32))
        proc = subprocess.run(
            [
                str(EXE),
                "decode",
                str(f),
                "-m",
                "wan",
                *PREVIEW,
                "--lossless",
                "--out-dir",
                str(disk),
            ],
            capture_output=True,
            text=True,
            preexec_fn=limit,
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and "z.mp4" in proc.stderr, proc.stderr
        # A full tmpfs makes ffmpeg say so; the file-size limit kills it with SIGXFSZ.
        assert "No space left" in proc.stderr or "SIGXFSZ" in proc.stderr, proc.stderr
        assert not list(disk.iterdir())
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(disk)], check=True)


def test_ctrl_c_mid_decode_removes_the_temporary_file(tmp_path):
    f = good(tmp_path / "z.safetensors", (16, 200, 60, 104))
    proc = subprocess.Popen(
        [str(EXE), "decode", str(f), "-m", "wan", *PREVIEW],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(600):  # wait until frames are really being written
        if list(tmp_path.glob(".*partial*")):
            break
        time.sleep(0.05)
    assert list(tmp_path.glob(".*partial*")), "the decode never started writing"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip() == f"interrupted; the partial {tmp_path / 'z.mp4'} was removed", err
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*partial*"))
