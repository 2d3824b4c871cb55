"""TAESD / TAESDXL / TAESDV (taesd layout) tiny decoders against an oracle written here.

The reference packages cannot be installed, so the expected frames come from `oracle` below, the
architecture as madebyollin/taesd (`taesd.py` `Decoder`) and madebyollin/taesdv (`taesdv.py`)
describe it: a flat sequence (soft clamp, conv, ReLU, then three stages of three residual blocks,
a x2 nearest upsample and a bias-free conv, one more block and the output conv); TAESDV's blocks
also take the previous frame's block input (zeros before the first), concatenated after the
frame's own. Both read model-space (UNet) latents and output [0, 1], written as clamp(0, 1) x 255
rounded (taesdv.py's writer). Plain per-frame loops with `F.conv2d` straight on the checkpoint
tensors; random narrow checkpoints saved as real files in each released naming: bare `N.*`
(`taesd_decoder.pth` / `.safetensors`), whole-autoencoder `decoder.N.*` (`taesdv.pth`). diffusers'
own `AutoencoderTiny` is a second, independent oracle for its `decoder.layers.N.*` files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from latent2mp4.engine import decode_stream
from latent2mp4.models.tiny.loader import load_tiny
from latent2mp4.models.tiny.taesd import TaesdConfig
from latent2mp4.presets import load_preset
from latent2mp4.video import read_video

from conftest import assert_one_line_error, latents

WIDTH = 8  # the released files have 64
BLOCKS = (3, 4, 5, 8, 9, 10, 13, 14, 15, 18)
UPS = (7, 12, 17)  # bias-free convs after each upsample


def shapes_of(memory: bool, n: int = WIDTH, channels: int = 4) -> dict[str, tuple[int, ...]]:
    """Every tensor of a taesd-layout decoder in the bare (`taesd_decoder.pth`) naming."""
    s: dict[str, tuple[int, ...]] = {"1.weight": (n, channels, 3, 3), "1.bias": (n,)}
    for i in BLOCKS:
        for j, cin in ((0, 2 * n if memory else n), (2, n), (4, n)):
            s[f"{i}.conv.{j}.weight"] = (n, cin, 3, 3)
            s[f"{i}.conv.{j}.bias"] = (n,)
    for i in UPS:
        s[f"{i}.weight"] = (n, n, 3, 3)
    s["19.weight"], s["19.bias"] = (3, n, 3, 3), (3,)
    return s


def random_checkpoint(memory: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes_of(memory).items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        sd[key] = t * 0.1 if key.endswith("bias") else t
    sd["19.weight"] *= 0.5  # keep the frames mostly inside (0, 1), so clamping hides nothing
    sd["19.bias"] = sd["19.bias"] * 0 + 0.5
    return sd


def oracle(sd: dict[str, torch.Tensor], z: torch.Tensor) -> np.ndarray:
    """uint8 `(F, H, W, 3)` for model-space latents `(C, T, h, w)` of one video."""
    sd = {k.removeprefix("decoder."): v.double() for k, v in sd.items() if "encoder" not in k}
    memory = sd["3.conv.0.weight"].shape[1] == 2 * sd["1.weight"].shape[0]

    def conv(x: torch.Tensor, key: str) -> torch.Tensor:
        return F.conv2d(x[None], sd[f"{key}.weight"], sd.get(f"{key}.bias"), padding=1)[0]

    def block(frames: list[torch.Tensor], i: int) -> list[torch.Tensor]:
        out, prev = [], torch.zeros_like(frames[0])
        for x in frames:
            y = torch.cat([x, prev]) if memory else x
            y = torch.relu(conv(y, f"{i}.conv.0"))
            y = torch.relu(conv(y, f"{i}.conv.2"))
            out.append(torch.relu(conv(y, f"{i}.conv.4") + x))
            prev = x
        return out

    x = [torch.relu(conv(torch.tanh(z[:, t].double() / 3) * 3, "1")) for t in range(z.shape[1])]
    for stage in range(3):
        for i in BLOCKS[3 * stage : 3 * stage + 3]:
            x = block(x, i)
        x = [conv(F.interpolate(f[None], scale_factor=2, mode="nearest")[0], str(UPS[stage]))
             for f in x]  # fmt: skip
    x = [conv(f, "19") for f in block(x, 18)]
    video = torch.stack(x).clamp(0, 1).mul(255).round().to(torch.uint8)
    return video.permute(0, 2, 3, 1).numpy()


def save(sd: dict[str, torch.Tensor], path: Path, half: bool = False, prefix: str = "") -> dict:
    sd = {prefix + k: v.half() if half else v for k, v in sd.items()}
    if prefix:  # a whole autoencoder: its encoder's tensors are ignored
        sd["encoder.0.weight"] = torch.randn(64, 3, 3, 3)
    if path.suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    return {k: v.float() for k, v in sd.items()}  # what the decoder sees


CASES = {  # name: (memory, file, half, prefix, preset)
    "taesd-pth-fp16": (False, "taesd_decoder.pth", True, "", "animatediff"),
    "taesdxl-safetensors": (False, "taesdxl_decoder.safetensors", False, "", "animatediff-sdxl"),
    "taesdv-pth": (True, "taesdv.pth", False, "decoder.", "svd"),  # SVD's (B, F, C, h, w)
    "taesdv-fp16-safetensors": (True, "taesdv.safetensors", True, "decoder.", "zeroscope"),
    "taesd-safetensors-latte": (False, "taesd_decoder.safetensors", False, "", "latte"),
    "taesd-pth-i2vgen-xl": (False, "taesd_decoder.pth", False, "", "i2vgen-xl"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cli_matches_the_reference_oracle(name: str, tmp_path: Path, cli) -> None:
    memory, file, half, prefix, model = CASES[name]
    seen = save(random_checkpoint(memory), tmp_path / file, half, prefix)
    z = latents((2, 4, 3, 5, 4), seed=3) * 1.5  # model space
    stored = z.transpose(1, 2).contiguous() if load_preset(model).layout == "BFCHW" else z
    save_file({"latents": stored}, str(tmp_path / "z.safetensors"))
    run = cli(
        "decode", tmp_path / "z.safetensors", "-m", model, "--decoder", "tiny",
        "--vae", tmp_path / file, "--lossless", "-o", tmp_path / "out.mkv",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    for b in range(2):
        got, _ = read_video(tmp_path / f"out-{b}.mkv")
        expected = oracle(seen, z[b])
        assert got.shape == expected.shape == (3, 40, 32, 3)
        diff = np.abs(got.astype(int) - expected.astype(int)).max()
        exact = (got == expected).mean()
        print(f"\n{name}[{b}]: {got.shape}, max {diff} LSB, {exact:.4%} exact, "
              f"std {expected.std():.0f}")  # fmt: skip
        assert expected.std() > 15  # a real picture, not a clamped flat one
        assert diff <= 1, diff


def test_taesdv_memory_streams_across_chunks_and_tiles(tmp_path: Path) -> None:
    save(random_checkpoint(True), tmp_path / "v.pth", prefix="decoder.")
    preset = load_preset("svd")
    module, description = load_tiny(str(tmp_path / "v.pth"), preset, "cpu", torch.float32)
    assert "TAESDV" in description
    z = latents((1, 4, 5, 6, 7), seed=4)
    whole = torch.cat(list(decode_stream(module, z, max_chunk_frames=5)), 2)
    one = torch.cat(list(decode_stream(module, z, max_chunk_frames=1)), 2)
    assert whole.shape == (1, 3, 5, 48, 56)
    assert (whole - one).abs().max() < 1e-5
    # Frames depend on the earlier ones (the memory is real): the last frame alone differs.
    alone = torch.cat(list(decode_stream(module, z[:, :, 4:])), 2)
    assert (alone[:, :, 0] - whole[:, :, 4]).abs().max() > 1e-2


def test_diffusers_autoencoder_tiny_files_match_diffusers(tmp_path: Path) -> None:
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
    ).eval()  # fmt: skip
    # Our random weights (its default init decodes nearly flat grey), one index lower: diffusers
    # applies the soft clamp outside its `layers`.
    sd = random_checkpoint(False, seed=2)
    vae.decoder.layers.load_state_dict({f"{int(k.split('.')[0]) - 1}.{k.split('.', 1)[1]}": v
                                        for k, v in sd.items()})  # fmt: skip
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()},
              str(tmp_path / "diffusion_pytorch_model.safetensors"))  # fmt: skip
    preset = load_preset("animatediff")
    module, _ = load_tiny(str(tmp_path / "diffusion_pytorch_model.safetensors"), preset, "cpu",
                          torch.float32)  # fmt: skip
    z = latents((2, 4, 3, 5, 6), seed=5)
    with torch.no_grad():
        ours = torch.cat(list(decode_stream(module, z)), 2)  # finalized: [-1, 1] levels
        frames = z.transpose(1, 2).flatten(0, 1)  # diffusers decodes images
        ref = vae.decode(frames).sample.unflatten(0, (2, 3)).transpose(1, 2)
    want = ((ref / 2 + 0.5).clamp(0, 1) * 255).round()
    got = ((ours + 1) * 127.5).round()
    gap = (got - want).abs().max().item()
    print(f"\ndiffusers AutoencoderTiny: max {gap:.0f} LSB, std {want.std():.0f}")
    assert want.std() > 15 and gap <= 1


def test_real_widths_are_read_from_the_tensors() -> None:
    for memory in (False, True):
        shapes = {f"decoder.{k}": v for k, v in shapes_of(memory, 64).items()}
        cfg = TaesdConfig.from_shapes(shapes)
        assert cfg == TaesdConfig(4, 64, memory) and cfg.variant == (4, 1, 1)
    from latent2mp4.models.tiny.blocks import TinyDecoder

    with torch.device("meta"):
        n = sum(p.numel() for p in TinyDecoder(TaesdConfig()).parameters())
    assert n == 1_222_531  # taesd README: "Parameters in Decoder"


def test_wrong_files_are_one_line(tmp_path: Path, cli) -> None:
    save_file({"latents": latents((1, 4, 2, 4, 4))}, str(tmp_path / "z.safetensors"))
    encoder = {"0.weight": torch.randn(8, 3, 3, 3), "1.conv.0.weight": torch.randn(8, 8, 3, 3)}
    save_file(encoder, str(tmp_path / "taesd_encoder.safetensors"))
    broken = {k: v for k, v in random_checkpoint(False).items() if k != "9.conv.2.bias"}
    save_file(broken, str(tmp_path / "broken.safetensors"))
    wide = {k: v for k, v in random_checkpoint(False).items()}
    wide["1.weight"] = torch.randn(WIDTH, 16, 3, 3)  # a 16-channel TAESD3 / TAEF1 decoder
    save_file(wide, str(tmp_path / "taef1_decoder.safetensors"))
    for vae, what in (
        ("taesd_encoder", "a tiny encoder"),
        ("broken", "9.conv.2.bias"),
        ("taef1_decoder", "16 latent channels"),
    ):
        run = cli(
            "decode", tmp_path / "z.safetensors", "-m", "animatediff", "--decoder", "tiny",
            "--vae", tmp_path / f"{vae}.safetensors", "-o", tmp_path / "o.mp4",
        )  # fmt: skip
        assert_one_line_error(run, 1, what)
    # A TAESD file with a preset of other latents names the one it fits... or none built in.
    save(random_checkpoint(False), tmp_path / "taesd_decoder.pth")
    save_file({"latents": latents((1, 12, 2, 4, 4))}, str(tmp_path / "m.safetensors"))
    run = cli(
        "decode", tmp_path / "m.safetensors", "-m", "mochi", "--decoder", "tiny",
        "--vae", tmp_path / "taesd_decoder.pth", "-o", tmp_path / "o.mp4",
    )  # fmt: skip
    assert_one_line_error(run, 1, "4 latent channels, patch 1, 1x time", "taem1.pth", "svd")
    assert not list(tmp_path.glob("o*"))


def test_svd_windows_restart_the_taesdv_memory(tmp_path: Path, cli) -> None:
    """SVD's decode_chunk_size windows (--decode-chunk-size) are separate clips for TAESDV too."""
    seen = save(random_checkpoint(True), tmp_path / "taesdv.pth", prefix="decoder.")
    z = latents((1, 4, 3, 4, 4), seed=6) * 1.5
    save_file({"latents": z.transpose(1, 2).contiguous()}, str(tmp_path / "z.safetensors"))
    run = cli(
        "decode", tmp_path / "z.safetensors", "-m", "svd", "--decoder", "tiny", "--vae",
        tmp_path / "taesdv.pth", "--decode-chunk-size", "2", "--lossless", "-o", tmp_path / "o.mkv",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    got, _ = read_video(tmp_path / "o.mkv")
    windows = np.concatenate([oracle(seen, z[0, :, :2]), oracle(seen, z[0, :, 2:])])
    whole = oracle(seen, z[0])
    assert np.abs(got.astype(int) - windows.astype(int)).max() <= 1
    assert np.abs(got.astype(int) - whole.astype(int)).max() > 1  # the windows matter


def test_sd_presets_name_their_tiny_decoder(tmp_path: Path, cli) -> None:
    save_file({"latents": latents((1, 4, 2, 4, 4))}, str(tmp_path / "z.safetensors"))
    for model, file in (
        ("animatediff", "taesd_decoder.safetensors"),
        ("animatediff-sdxl", "taesdxl_decoder.safetensors"),
        ("modelscope", "taesd_decoder.safetensors"),
        ("svd-xt", "taesdv.pth"),
    ):
        run = cli("decode", tmp_path / "z.safetensors", "-m", model, "--decoder", "tiny")
        assert_one_line_error(run, 2, "--vae", file, "madebyollin")
