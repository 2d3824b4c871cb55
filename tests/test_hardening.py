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

from latent2mp4.video import read_video

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


def _bad_fps_metadata(tmp: Path) -> list[str]:
    meta = {"latent2mp4.fps": "abc"}
    save_file({"latents": latents((16, 2, 4, 4))}, str(tmp / "z.safetensors"), metadata=meta)
    return [str(tmp / "z.safetensors"), "-m", "wan", *PREVIEW]


CATALOGUE: dict[str, Bad] = {
    "fps metadata that is not a number": Bad(_bad_fps_metadata, 1, "not a positive number"),
    "missing file": Bad(lambda t: [str(t / "z.safetensors"), "-m", "wan"], 1, "file not found"),
    "empty file": Bad(_bytes(b""), 1, "not a readable safetensors file"),
    "truncated file": Bad(_truncated, 1, "not a readable safetensors file"),
    "random bytes": Bad(_bytes(bytes(range(256)) * 4), 1, "not a readable safetensors file"),
    "header lies about offsets": Bad(_lying_header, 1, "invalid shape, data type, or offset"),
    "pickle renamed to .safetensors": Bad(_pickle, 1, "PyTorch pickle"),
    "wrong ndim": Bad(lambda t: _latent(t, torch.zeros(16, 4, 4)), 1, "expected (C,F,H,W)"),
    "wrong channel count": Bad(
        lambda t: _latent(t, torch.zeros(48, 2, 4, 4)),
        1,
        "did you mean cosmos3 or lucy-edit or wan2.2",
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


@pytest.mark.parametrize(
    "sig, code, said",
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["ctrl-c", "sigterm"],  # SIGTERM: what scancel, a SLURM time limit and `timeout` send
)
def test_a_signal_mid_decode_removes_the_temporary_file(tmp_path, sig, code, said):
    f = good(tmp_path / "z.safetensors", (16, 200, 60, 104))
    proc = subprocess.Popen(
        [str(EXE), "decode", str(f), "-m", "wan", *PREVIEW],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it: a suite started in the background by a
        # non-interactive shell runs with SIGINT ignored, which children would inherit.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for _ in range(600):  # wait until frames are really being written
        if list(tmp_path.glob(".*partial*")):
            break
        time.sleep(0.05)
    assert list(tmp_path.glob(".*partial*")), "the decode never started writing"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "Traceback" not in err, err
    assert err.strip() == f"{said}; the partial {tmp_path / 'z.mp4'} was removed", err
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*partial*"))


# ---- the bad-weights catalogue ----------------------------------------------------------------
# Each case copies a tiny real VAE (diffusers folder) and breaks one thing; decoding must end in
# one line naming the file, exit 1, and no video.


def _copy_vae(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(folder: Path, **changes) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _edit_state(folder: Path, edit: Callable[[dict], None], name: str | None = None) -> Path:
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    edit(state)
    out = folder / (name or "diffusion_pytorch_model.safetensors")
    save_file(state, str(out))
    return out


def _set(key: str, value: torch.Tensor) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        state[key] = value

    return edit


def _encoder_only(state: dict) -> None:
    for k in [k for k in state if not k.startswith("encoder.")]:
        del state[k]


@dataclass(frozen=True)
class BadVae:
    """One bad-weights row: `make(tmp, vaes)` returns the --vae path (and extra CLI args)."""

    make: Callable[[Path, dict], tuple[Path, list[str]]]
    fragment: str
    names: str  # the file or folder the message must name
    model: str = "wan"


WAN_CONV = "decoder.conv_in.weight"
HY_CONV = "decoder.conv_in.conv.weight"


def _wan(tmp: Path, vaes: dict) -> Path:
    return _copy_vae(vaes["wan"], tmp / "bad")


def _hy(tmp: Path, vaes: dict) -> Path:
    return _copy_vae(vaes["hunyuan"], tmp / "bad")


def _tensors(
    edit: Callable[[dict], None], extra: tuple[str, ...] = ()
) -> Callable[[Path, dict], tuple[Path, list[str]]]:
    def make(tmp: Path, vaes: dict) -> tuple[Path, list[str]]:
        folder = _wan(tmp, vaes)
        _edit_state(folder, edit)
        return folder, list(extra)

    return make


def _shards(weight_map: object) -> Callable[[Path, dict], tuple[Path, list[str]]]:
    def make(tmp: Path, vaes: dict) -> tuple[Path, list[str]]:
        folder = _wan(tmp, vaes)
        (folder / "diffusion_pytorch_model.safetensors").unlink()
        index = folder / "diffusion_pytorch_model.safetensors.index.json"
        index.write_text(json.dumps({"weight_map": weight_map}))
        return folder, []

    return make


def _tencent_original(tmp: Path, vaes: dict, groups: int) -> Path:
    """A Tencent-release folder: AutoencoderKLCausal3D config.json + pytorch_model.pt."""
    folder = tmp / "tencent"
    folder.mkdir()
    state = load_file(str(vaes["hunyuan"] / "diffusion_pytorch_model.safetensors"))
    torch.save(
        {"state_dict": {f"vae.{k}": v for k, v in state.items()}}, folder / "pytorch_model.pt"
    )
    diffusers_cfg = json.loads((vaes["hunyuan"] / "config.json").read_text())
    cfg = {
        "_class_name": "AutoencoderKLCausal3D",
        "_diffusers_version": "0.4.2",
        "act_fn": "silu",
        "block_out_channels": diffusers_cfg["block_out_channels"],
        "down_block_types": ["DownEncoderBlockCausal3D"] * 4,
        "up_block_types": ["UpDecoderBlockCausal3D"] * 4,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 16,
        "layers_per_block": diffusers_cfg["layers_per_block"],
        "norm_num_groups": groups,
        "sample_size": 256,
        "sample_tsize": 64,
        "scaling_factor": 0.613,
        "time_compression_ratio": 4,
        "mid_block_add_attention": True,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


BAD_WEIGHTS: dict[str, BadVae] = {
    "config widths contradict the tensors": BadVae(
        lambda t, v: (_edit_config(_wan(t, v), base_dim=16), []),
        "weights do not fit the config",
        "bad",
    ),
    "config group count contradicts the widths": BadVae(
        lambda t, v: (_edit_config(_hy(t, v), norm_num_groups=3), []),
        "cannot be built from this config",
        "config.json",
        "hunyuan",
    ),
    "config block count above the tensors'": BadVae(
        lambda t, v: (_edit_config(_hy(t, v), layers_per_block=2), []),
        "checkpoint lacks",
        "bad",
        "hunyuan",
    ),
    "config block count below the tensors'": BadVae(
        lambda t, v: (_edit_config(_wan(t, v), num_res_blocks=0), []),
        "unexpected decoder weights",
        "bad",
    ),
    "config value of the wrong type": BadVae(
        lambda t, v: (_edit_config(_wan(t, v), base_dim="wide"), []),
        "cannot build the wan decoder config",
        "config.json",
    ),
    "config latents_std not numbers": BadVae(
        lambda t, v: (_edit_config(_wan(t, v), latents_std=["x"] * 16), []),
        "latents_std",
        "config.json",
    ),
    "tensor of the wrong shape": BadVae(
        _tensors(_set(WAN_CONV, torch.zeros(3, 3))),
        "weights do not fit the config",
        "bad",
    ),
    "integer tensor": BadVae(
        _tensors(_set(WAN_CONV, torch.zeros(32, 16, 3, 3, 3, dtype=torch.int32))),
        "holds int32 values",
        WAN_CONV,
    ),
    "weights without the decoder (folder)": BadVae(
        _tensors(_encoder_only),
        "holds no VAE decoder weights",
        "bad",
    ),
    "weights without the decoder (single file)": BadVae(
        lambda t, v: (_edit_state(_wan(t, v), _encoder_only, "enc.safetensors"), []),
        "holds no VAE decoder weights",
        "enc.safetensors",
    ),
    "shard index pointing nowhere": BadVae(
        _shards({WAN_CONV: "diffusion_pytorch_model-00001-of-00002.safetensors"}),
        "shard files missing",
        "00001-of-00002",
    ),
    "shard index that is not a map": BadVae(
        _shards(["diffusion_pytorch_model-00001.safetensors"]), "weight_map must map", "index.json"
    ),
    "NaN in a weight": BadVae(
        _tensors(_set(WAN_CONV, torch.full((32, 16, 3, 3, 3), float("nan")))),
        "contain NaN/Inf (first: decoder.conv_in.weight)",
        "bad",
    ),
    "Inf in a weight": BadVae(
        _tensors(_set("decoder.head.2.bias", torch.full((3,), float("inf")))),
        "contain NaN/Inf",
        "bad",
    ),
    "a weight beyond fp16's range, decoded in fp16": BadVae(
        _tensors(
            _set("decoder.head.2.bias", torch.full((3,), 1e6)),
            (
                "--dtype",
                "fp16",
            ),
        ),
        "overflow float16",
        "bad",
    ),
    "original release with a contradicting group count": BadVae(
        lambda t, v: (_tencent_original(t, v, groups=3), []),
        "cannot be built from this config",
        "config.json",
        "hunyuan",
    ),
}


@pytest.fixture(scope="module")
def vaes(wan_vae, hunyuan_vae) -> dict:
    return {"wan": wan_vae, "hunyuan": hunyuan_vae}


@pytest.mark.parametrize("case", list(BAD_WEIGHTS), ids=list(BAD_WEIGHTS))
def test_bad_weights_catalogue(tmp_path, cli, vaes, case):
    bad = BAD_WEIGHTS[case]
    vae, extra = bad.make(tmp_path, vaes)
    z = good(tmp_path / "z.safetensors")
    run = cli("decode", z, "-m", bad.model, "--vae", vae, *extra)
    print(f"\n{case} -> exit {run.exit_code}: {run.stderr.strip()}")
    assert_one_line_error(run, 1, bad.fragment, bad.names)
    assert not list(tmp_path.rglob("*.mp4")) and not list(tmp_path.rglob(".*partial*"))


def test_original_release_config_is_read(tmp_path, cli, vaes):
    """A Tencent folder (AutoencoderKLCausal3D + pytorch_model.pt) with the tiny model's group
    count (4, not the released 32 that tensor shapes would suggest) and scaling factor 0.613:
    decoded within 1 LSB of diffusers with z / 0.613."""
    from diffusers import AutoencoderKLHunyuanVideo

    folder = _tencent_original(tmp_path, vaes, groups=4)
    z = latents((1, 16, 2, 4, 4), seed=5)
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    run = cli(
        "decode",
        tmp_path / "z.safetensors",
        "-m",
        "hunyuan",
        "--vae",
        folder,
        "--lossless",
        "--no-tile",
        "-o",
        tmp_path / "out.mkv",
    )
    assert run.exit_code == 0, run.output
    ref = AutoencoderKLHunyuanVideo.from_pretrained(vaes["hunyuan"]).eval()
    with torch.no_grad():
        video = ref.decode(z / 0.613).sample
    want = ((video / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0).numpy() * 255).round()
    got, _ = read_video(tmp_path / "out.mkv")
    assert got.shape == want.shape and abs(got.astype(int) - want.astype(int)).max() <= 1


def test_fp16_overflow_while_decoding_stops_and_publishes_nothing(tmp_path, cli, wan_vae):
    # 1e5 is finite in the fp32 file but beyond fp16: the decoded chunk is NaN.
    f = good(tmp_path / "z.safetensors")
    save_file({"latents": torch.full((16, 2, 4, 4), 1e5)}, str(f))
    args = ["decode", f, "-m", "wan", "--vae", wan_vae, "--latent-space", "vae"]
    run = cli(*args, "--dtype", "fp16")
    assert_one_line_error(run, 1, "float16 overflowed", "--dtype bf16", "z.safetensors")
    assert not list(tmp_path.rglob("*.mp4")) and not list(tmp_path.rglob(".*partial*"))


@pytest.mark.parametrize(
    "target, doing",
    [
        ("latent2mp4.decoder.load_vae", "building and loading the VAE decoder"),
        ("latent2mp4.decoder.decode_stream", "decoding"),
    ],
)
def test_internal_errors_are_one_line_and_verbose_shows_the_traceback(
    tmp_path, cli, monkeypatch, wan_vae, target, doing
):
    # A stand-in bug: the thing under test is the CLI's handling of an exception that is not ours.
    def bug(*args, **kwargs):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(target, bug)
    f = good(tmp_path / "z.safetensors")
    run = cli("decode", f, "-m", "wan", "--vae", wan_vae)
    assert_one_line_error(
        run, 1, f"internal error while {doing} (ZeroDivisionError: simulated bug)", "--verbose"
    )
    assert not list(tmp_path.rglob("*.mp4"))
    run = cli("decode", f, "-m", "wan", "--vae", wan_vae, "--verbose", "--overwrite")
    assert run.exit_code == 1 and "Traceback" in run.stderr and "simulated bug" in run.stderr
