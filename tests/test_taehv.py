"""Tiny (taehv) decoders: streamed CLI output against a whole-clip oracle written here.

The reference package cannot be installed, so the expected frames come from `oracle` below: the
architecture as madebyollin/taehv describes it (a flat `decoder.N` sequence; memory blocks see
the previous frame's input, zeros before the first; temporal grows split a 1x1 conv's channels
into frames; `decode_video` trims `t_upscale - 1` leading frames except for CogVideoX with an even
latent count; frames are clamp(0, 1) x 255 rounded), as plain per-frame loops with `F.conv2d`
straight on the checkpoint tensors. Checkpoints are random, with narrow widths (read from the
tensors like the real widths), saved as real `.safetensors` and weights-only `.pth` files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from latent2mp4.engine import TileGrid, decode_stream
from latent2mp4.latents import denormalise
from latent2mp4.models.tiny.loader import load_tiny
from latent2mp4.models.tiny.taehv import TinyConfig, TinyDecoder
from latent2mp4.presets import CONFIG_DIR, load_preset
from latent2mp4.video import read_video

from conftest import assert_one_line_error, latents

# ---- checkpoints, from the architecture description -------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    channels: int
    patch: int
    strides: tuple[int, int, int]
    super_: bool = False


TAEW21 = Variant("taew2_1", 16, 1, (1, 2, 2))
TAECVX = Variant("taecvx", 16, 1, (1, 2, 2))
TAEW22 = Variant("taew2_2", 48, 2, (1, 2, 2))
TAEHV15 = Variant("taehv1_5", 32, 2, (1, 2, 2))
TAELTX2 = Variant("taeltx_2", 128, 4, (2, 2, 2))
TAEW22_SUPER = Variant("taew2_2_super", 48, 2, (1, 2, 2), super_=True)
TAEH3 = Variant("taeh3", 24, 2, (1, 2, 2))
# madebyollin/taem1's decoder is this base sequence, index for index (its MemBlock has an identity
# skip at equal widths, its TGrow the same channel-group split), with strides (1, 2, 3), 12
# channels, and `decode_video` dropping the first 5 frames: t_upscale - 1 again.
TAEM1 = Variant("taem1", 12, 1, (1, 2, 3))
WIDTHS = (24, 16, 8, 8)  # the released files have (256, 128, 64, 64), super (512, 256, 128, 64)


def shapes_of(v: Variant, n: tuple[int, ...] = WIDTHS) -> dict[str, tuple[int, ...]]:
    """Every `decoder.N` tensor of a variant (plus a few encoder tensors, which are ignored)."""
    s: dict[str, tuple[int, ...]] = {"encoder.0.weight": (64, 3 * v.patch**2, 3, 3)}
    if v.super_:
        s["decoder.0.weight"] = (n[0], v.channels, 1, 1)
        i = 1
        for k in range(3):
            for _ in range(3):  # ConvNeXt-style memory block
                c = n[k]
                s[f"decoder.{i}.conv.0.weight"] = (2 * c, 1, 7, 7)
                s[f"decoder.{i}.conv.1.weight"] = (4 * c, 2 * c, 1, 1)
                s[f"decoder.{i}.conv.1.bias"] = (4 * c,)
                s[f"decoder.{i}.conv.3.weight"] = (c, 4 * c, 1, 1)
                i += 1
            s[f"decoder.{i}.weight"] = (4 * n[k + 1], n[k], 3, 3)  # then ReLU, PixelShuffle
            s[f"decoder.{i}.bias"] = (4 * n[k + 1],)
            s[f"decoder.{i + 3}.conv.weight"] = (n[k + 1] * v.strides[k], n[k + 1], 1, 1)
            i += 4
    else:
        s["decoder.1.weight"] = (n[0], v.channels, 3, 3)  # after Clamp; then ReLU
        s["decoder.1.bias"] = (n[0],)
        i = 3
        for k in range(3):
            for _ in range(3):
                c = n[k]
                for j, cin in ((0, 2 * c), (2, c), (4, c)):
                    s[f"decoder.{i}.conv.{j}.weight"] = (c, cin, 3, 3)
                    s[f"decoder.{i}.conv.{j}.bias"] = (c,)
                i += 1
            s[f"decoder.{i + 1}.conv.weight"] = (n[k] * v.strides[k], n[k], 1, 1)  # after Upsample
            s[f"decoder.{i + 2}.weight"] = (n[k + 1], n[k], 3, 3)
            i += 3
        i += 1  # ReLU
    s[f"decoder.{i}.weight"] = (3 * v.patch**2, n[3], 3, 3)
    s[f"decoder.{i}.bias"] = (3 * v.patch**2,)
    assert i == 22
    return s


def random_checkpoint(v: Variant, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes_of(v).items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        if key.endswith("bias"):
            t = t * 0.1
        sd[key] = t
    # Keep the frames mostly inside (0, 1), so clamping does not hide errors.
    sd["decoder.22.weight"] *= 0.6
    sd["decoder.22.bias"] = sd["decoder.22.bias"] * 0 + 0.5
    return sd


# ---- the oracle: whole clip, block by block, frame by frame --------------------------------------


def oracle(
    sd: dict[str, torch.Tensor], z: torch.Tensor, cogvideox: bool, h3: bool = False
) -> np.ndarray:
    """uint8 `(F, H, W, 3)` for latents `(C, T, h, w)` of one video (model space).

    `h3`: taeh3's `_decode_h3_video`: all frames, zero-padded to whole 5-latent clips, the first
    `t_upscale - 1` frames of each clip dropped, then the last 3 latents' frames cut."""
    sd = {k: v.double() for k, v in sd.items() if k.startswith("decoder.")}
    sup = "decoder.0.weight" in sd
    frames = [z[:, t].double() for t in range(z.shape[1])]

    def conv(x, key, pad=1, groups=1):
        return F.conv2d(x[None], sd[key + ".weight"], sd.get(key + ".bias"), 1, pad, 1, groups)[0]

    def memory(frames, i):
        out, prev = [], torch.zeros_like(frames[0])
        for x in frames:
            y = torch.cat([x, prev])
            if sup:
                y = conv(y, f"decoder.{i}.conv.0", pad=3, groups=y.shape[0])
                y = conv(torch.relu(conv(y, f"decoder.{i}.conv.1", 0)), f"decoder.{i}.conv.3", 0)
                out.append(y + x)
            else:
                y = torch.relu(conv(y, f"decoder.{i}.conv.0"))
                y = torch.relu(conv(y, f"decoder.{i}.conv.2"))
                out.append(torch.relu(conv(y, f"decoder.{i}.conv.4") + x))
            prev = x
        return out

    def grow(frames, i):
        out = []
        for x in frames:
            y = conv(x, f"decoder.{i}.conv", 0)
            out += list(y.chunk(y.shape[0] // x.shape[0]))  # channel group j is frame j
        return out

    if sup:
        x = [conv(f, "decoder.0", 0) for f in frames]
        i = 1
    else:
        x = [torch.relu(conv(torch.tanh(f / 3) * 3, "decoder.1")) for f in frames]
        i = 3
    for _ in range(3):
        for _ in range(3):
            x = memory(x, i)
            i += 1
        if sup:
            x = [F.pixel_shuffle(torch.relu(conv(f, f"decoder.{i}"))[None], 2)[0] for f in x]
            x = grow(x, i + 3)
            i += 4
        else:
            x = [F.interpolate(f[None], scale_factor=2, mode="nearest")[0] for f in x]
            x = grow(x, i + 1)
            x = [conv(f, f"decoder.{i + 2}") for f in x]
            i += 3
    if not sup:
        x = [torch.relu(f) for f in x]
    patch = math.isqrt(sd["decoder.22.weight"].shape[0] // 3)
    x = [F.pixel_shuffle(conv(f, "decoder.22")[None], patch)[0] for f in x]
    t_up = len(x) // len(frames)
    if h3:
        clip = 5 * t_up
        x += [torch.zeros_like(x[0])] * (-len(x) % clip)
        x = [f for k, f in enumerate(x) if k % clip >= t_up - 1][: -3 * t_up]
    elif not (cogvideox and len(frames) % 2 == 0):
        x = x[t_up - 1 :]
    video = torch.stack(x).clamp(0, 1).mul(255).round().to(torch.uint8)
    return video.permute(0, 2, 3, 1).numpy()


# ---- presets the tests need that may not be built in yet ----------------------------------------


def preset_file(tmp: Path, name: str, channels: int, ratio: int, t_ratio: int) -> Path:
    """A preset YAML (HunyuanVideo 1.5 / LTX-2 shaped) written from wan.yaml."""
    d = yaml.safe_load((CONFIG_DIR / "wan.yaml").read_text())
    d.update(name=name, aliases=[], latent_channels=channels, spatial_ratio=ratio)
    d.update(temporal_ratio=t_ratio, normalization={"scaling_factor": 1.0})
    d["preview"] = {"bias": [0, 0, 0], "factors": [[0.1, 0.1, 0.1]] * channels}
    d.pop("tiny", None)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@dataclass(frozen=True)
class Case:
    variant: Variant
    model: str  # built-in preset, or "file:<name>:<channels>:<ratio>:<t_ratio>"
    frames: int
    hw: tuple[int, int]
    suffix: str = ".safetensors"
    half: bool = False  # fp16 checkpoint
    batch: int = 1


CASES = {
    "taew2_1": Case(TAEW21, "wan", 3, (5, 4), ".pth", batch=2),
    "taew2_1-fp16": Case(TAEW21, "wan", 2, (4, 4), half=True),
    "taecvx-even": Case(TAECVX, "cogvideox", 4, (4, 5)),
    "taecvx-odd": Case(TAECVX, "cogvideox", 3, (4, 4), ".pth"),
    "taew2_2": Case(TAEW22, "wan2.2", 3, (3, 4)),
    "taew2_2_super": Case(TAEW22_SUPER, "wan2.2", 2, (3, 3), ".pth", half=True),
    "taehv1_5": Case(TAEHV15, "file:hunyuan1.5:32:16:4", 2, (3, 4)),
    "taeltx_2": Case(TAELTX2, "file:ltx2:128:32:8", 2, (2, 2)),
    "taeh3": Case(TAEH3, "minimax-h3", 12, (2, 3), batch=2),  # two whole clips and the tail
    "taem1": Case(TAEM1, "mochi", 3, (3, 4), ".pth", batch=2),
    "taem1-fp16": Case(TAEM1, "mochi", 2, (3, 3), half=True),
}


def save_checkpoint(sd: dict[str, torch.Tensor], path: Path, half: bool) -> dict:
    sd = {k: v.half() if half else v for k, v in sd.items()}
    if path.suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    return {k: v.float() for k, v in sd.items()}  # what the decoder sees


def model_args(case: Case, tmp: Path) -> list[str | Path]:
    if case.model.startswith("file:"):
        _, name, c, r, t = case.model.split(":")
        return ["--preset", preset_file(tmp, name, int(c), int(r), int(t))]
    return ["-m", case.model]


@pytest.mark.parametrize("name", list(CASES))
def test_cli_stream_matches_whole_clip_oracle(name: str, tmp_path: Path, cli) -> None:
    case = CASES[name]
    v = case.variant
    sd = save_checkpoint(random_checkpoint(v), tmp_path / f"{v.name}{case.suffix}", case.half)
    z = latents((case.batch, v.channels, case.frames, *case.hw), seed=3) * 1.5
    cog = case.model.startswith("cog")
    stored = z.transpose(1, 2).contiguous() if cog else z  # the preset's layout
    save_file({"latents": stored}, str(tmp_path / "z.safetensors"))
    run = cli(
        "decode", tmp_path / "z.safetensors", *model_args(case, tmp_path), "--decoder", "tiny",
        "--vae", tmp_path / f"{v.name}{case.suffix}", "--lossless", "-o", tmp_path / "out.mkv",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    names = ["out.mkv"] if case.batch == 1 else [f"out-{b}.mkv" for b in range(case.batch)]
    outs = [tmp_path / n for n in names]
    for b, out in enumerate(outs):
        got, _ = read_video(out)
        expected = oracle(sd, z[b], cogvideox=cog, h3=v is TAEH3)
        assert got.shape == expected.shape, (got.shape, expected.shape)
        diff = np.abs(got.astype(int) - expected.astype(int)).max()
        exact = (got == expected).mean()
        spread = expected.std()
        print(f"\n{name}[{b}]: {got.shape}, max {diff} LSB, {exact:.4%} exact, std {spread:.0f}")
        assert spread > 15  # a real picture, not a clamped flat one
        assert diff <= 1, diff


def test_vae_space_latents_are_normalised_first(tmp_path: Path, cli) -> None:
    sd = save_checkpoint(random_checkpoint(TAEW21), tmp_path / "t.safetensors", half=False)
    z = latents((1, 16, 2, 4, 4), seed=5)
    zv = denormalise(z, load_preset("wan").normalization)
    save_file({"latents": zv}, str(tmp_path / "z.safetensors"))
    run = cli(
        "decode", tmp_path / "z.safetensors", "-m", "wan", "--decoder", "tiny", "--lossless",
        "--vae", tmp_path / "t.safetensors", "--latent-space", "vae", "-o", tmp_path / "o.mkv",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    got, _ = read_video(tmp_path / "o.mkv")
    assert np.abs(got.astype(int) - oracle(sd, z[0], False).astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("model", "rule"),
    [("wan", "causal"), ("cogvideox", "paired"), ("ltx", "causal"), ("mochi", "causal")],
)
@pytest.mark.parametrize("t", [1, 2, 3, 4, 5])
def test_frame_counts_equal_the_full_vae(model: str, rule: str, t: int, tmp_path: Path) -> None:
    preset = (
        load_preset(str(preset_file(tmp_path, "ltx2", 128, 32, 8)))
        if model == "ltx"
        else load_preset(model)
    )
    v = {"ltx": TAELTX2, "mochi": TAEM1}.get(model, TAECVX)
    cfg = TinyConfig(v.channels, v.patch, v.strides, WIDTHS)
    decoder = TinyDecoder(cfg, preset.frames_out).eval()
    z = latents((1, v.channels, t, 1, 1))
    got = sum(x.shape[2] for x in decode_stream(decoder, z))
    t_up = math.prod(v.strides)
    reference = t_up * t if rule == "paired" and t % 2 == 0 else t_up * t - (t_up - 1)
    assert got == preset.frames_out(t) == reference


def test_chunks_and_tiles_keep_state_per_tile() -> None:
    cfg = TinyConfig(16, 1, (1, 2, 2), WIDTHS)
    decoder = TinyDecoder(cfg)
    decoder.load_state_dict({k: v for k, v in random_checkpoint(TAEW21).items() if "enc" not in k})
    z = latents((2, 16, 4, 6, 7), seed=2)
    grid = TileGrid(size=(4, 4), stride=(3, 3))
    one = torch.cat(list(decode_stream(decoder, z, grid, max_chunk_frames=1)), 2)
    whole = torch.cat(list(decode_stream(decoder, z, grid, max_chunk_frames=4)), 2)
    assert one.shape == (2, 3, 13, 48, 56)
    assert (one - whole).abs().max() < 1e-5
    untiled = torch.cat(list(decode_stream(decoder, z)), 2)
    assert (untiled - one).abs().max() > 0  # tiles really were used


def test_real_widths_are_read_from_the_tensors() -> None:
    cfg = TinyConfig.from_shapes(shapes_of(TAEW21, (256, 128, 64, 64)))
    assert cfg == TinyConfig()
    sup = TinyConfig.from_shapes(shapes_of(TAEW22_SUPER, (512, 256, 128, 64)))
    assert sup == TinyConfig(48, 2, (1, 2, 2), (512, 256, 128, 64), True)
    ltx = TinyConfig.from_shapes(shapes_of(TAELTX2, (256, 128, 64, 64)))
    assert (ltx.variant, ltx.upscale) == ((128, 4, 8), 32)
    with torch.device("meta"):
        n = sum(p.numel() for p in TinyDecoder(cfg).parameters())
        n_sup = sum(p.numel() for p in TinyDecoder(sup).parameters())
    assert round(n / 1e6, 1) == 9.8 and round(n_sup / 1e6) == 19  # taehv README's sizes


def test_wan2_2_checkpoint_with_wan_names_the_right_preset(tmp_path: Path, cli) -> None:
    save_file(random_checkpoint(TAEW22), str(tmp_path / "taew2_2.safetensors"))
    save_file({"latents": latents((1, 16, 2, 4, 4))}, str(tmp_path / "z.safetensors"))
    out = tmp_path / "o.mp4"
    run = cli(
        "decode", tmp_path / "z.safetensors", "-m", "wan", "--decoder", "tiny",
        "--vae", tmp_path / "taew2_2.safetensors", "-o", out,
    )  # fmt: skip
    assert_one_line_error(run, 1, "48 latent channels, patch 2", "wan2.2", "taew2_1")
    assert not list(tmp_path.glob("o*"))


def test_missing_vae_says_what_to_download(tmp_path: Path, cli) -> None:
    save_file({"latents": latents((1, 16, 2, 4, 4))}, str(tmp_path / "z.safetensors"))
    run = cli("decode", tmp_path / "z.safetensors", "-m", "wan", "--decoder", "tiny")
    assert_one_line_error(run, 2, "--vae", "taew2_1.safetensors", "github.com/madebyollin/taehv")
    assert not list(tmp_path.glob("z.mp4"))


def test_not_a_tiny_checkpoint_is_one_line(tmp_path: Path, cli) -> None:
    sd = {k: v for k, v in random_checkpoint(TAEW21).items() if k != "decoder.4.conv.2.bias"}
    save_file(sd, str(tmp_path / "broken.safetensors"))
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    save_file({"latents": latents((1, 16, 2, 4, 4))}, str(tmp_path / "z.safetensors"))
    for vae, what in (("broken", "decoder.4.conv.2.bias"), ("other", "not a tiny autoencoder")):
        run = cli(
            "decode", tmp_path / "z.safetensors", "-m", "wan", "--decoder", "tiny",
            "--vae", tmp_path / f"{vae}.safetensors", "-o", tmp_path / "o.mp4",
        )  # fmt: skip
        assert_one_line_error(run, 1, what)


def test_load_tiny_casts_half_checkpoints(tmp_path: Path) -> None:
    sd = save_checkpoint(random_checkpoint(TAEW21), tmp_path / "t.safetensors", half=True)
    module, description = load_tiny(str(tmp_path / "t.safetensors"), load_preset("wan"), "cpu",
                                    torch.float32)  # fmt: skip
    assert "16 channels, patch 1, 4x time" in description
    got = module.state_dict()["decoder.1.weight"]
    assert got.dtype == torch.float32 and torch.equal(got, sd["decoder.1.weight"])
    assert load_file(str(tmp_path / "t.safetensors"))["decoder.1.weight"].dtype == torch.float16


def test_python_api_tiny_decoder(tmp_path: Path) -> None:
    import latent2mp4

    sd = save_checkpoint(random_checkpoint(TAEW22), tmp_path / "t.pth", half=False)
    z = latents((1, 48, 2, 3, 3), seed=9)
    decoder = latent2mp4.load_decoder("wan2.2", tmp_path / "t.pth", "cpu", "fp32", decoder="tiny")
    video = decoder.decode(z)  # (1, 3, F, H, W) in [-1, 1]
    got = ((video[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    expected = oracle(sd, z[0], cogvideox=False)
    assert got.shape == expected.shape == (5, 48, 48, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    with pytest.raises(latent2mp4.Latent2Mp4Error, match="taew2_2.safetensors"):
        latent2mp4.load_decoder("wan2.2", None, "cpu", decoder="tiny")
