"""decode_file's plumbing: streaming into the writer, and the memory-driven tiling choice."""

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from latent2mp4 import memory, tiling
from latent2mp4.decoder import Decoder
from latent2mp4.errors import InputError
from latent2mp4.pipeline import DecodeOptions, plan
from latent2mp4.video import read_video

from conftest import latents
from tiny_wan import make_tiny_wan


@pytest.fixture(scope="module")
def wan_vae(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wan") / "vae"
    make_tiny_wan(path, "2.1")
    return path


def test_frames_reach_the_writer_before_the_last_latent_frame_is_decoded(tmp_path, wan_vae):
    T = 6
    save_file({"latents": latents((1, 16, T, 4, 4))}, str(tmp_path / "z.safetensors"))
    opts = DecodeOptions(model="wan", vae=str(wan_vae), out=tmp_path / "z.mkv", lossless=True)
    job = plan(tmp_path / "z.safetensors", opts)
    assert job.chunk_frames == 8  # 4x4 latent frames are grouped on the CPU, too small alone
    job = dataclasses.replace(job, chunk_frames=1)  # what a large frame gets
    dec = Decoder(opts, job.preset)
    calls: list[int] = []
    original = dec.module.decode_chunk

    def counting(z, state):
        calls.append(z.shape[2])
        return original(z, state)

    dec.module.decode_chunk = counting  # observe, do not replace: the real decoder still runs
    seen_at_write: list[int] = []
    dec.run(job, opts, progress=lambda n: seen_at_write.append(len(calls)))
    assert len(calls) == T and len(seen_at_write) == 4 * (T - 1) + 1
    # The decoder runs at most a couple of chunks ahead of the writer (the prefetch queue), so
    # the first frames were written long before the last latent frame was decoded.
    assert seen_at_write[0] <= 3 < T
    assert seen_at_write[4 * (T - 3)] < T
    assert read_video(tmp_path / "z.mkv")[0].shape[0] == 21


def test_untiled_when_it_fits_tiled_when_it_does_not(tmp_path, wan_vae, monkeypatch):
    save_file({"latents": latents((1, 16, 2, 40, 40))}, str(tmp_path / "z.safetensors"))
    opts = DecodeOptions(model="wan", vae=str(wan_vae), dtype="fp32")
    assert plan(tmp_path / "z.safetensors", opts).grid is None
    need = memory.estimate(
        plan(tmp_path / "z.safetensors", opts).preset, 40, 40, torch.float32, None
    )
    monkeypatch.setattr(
        tiling, "available_bytes", lambda device: int(need.bytes / memory.BUDGET_SHARE) - 1
    )
    job = plan(tmp_path / "z.safetensors", opts)
    assert job.grid is not None and job.grid.size == (32, 32)
    assert any("tiled in 256x256 px tiles" in n for n in job.notes)
    with pytest.raises(InputError, match="untiled needs about .* GiB.*--no-tile"):
        plan(tmp_path / "z.safetensors", DecodeOptions(model="wan", no_tile=True, dtype="fp32"))
    monkeypatch.setattr(tiling, "available_bytes", lambda device: 1 << 20)
    with pytest.raises(InputError, match="even in tiles"):
        plan(tmp_path / "z.safetensors", opts)


def test_explicit_tile_size_forces_tiles(tmp_path):
    save_file({"latents": latents((1, 16, 2, 10, 10))}, str(tmp_path / "z.safetensors"))
    job = plan(tmp_path / "z.safetensors", DecodeOptions(model="wan", tile_size=32, tile_stride=24))
    assert job.grid is not None and (job.grid.size, job.grid.stride) == ((4, 4), (3, 3))
    assert plan(tmp_path / "z.safetensors", DecodeOptions(model="wan", tile_size=256)).grid is None


def test_small_latent_frames_are_grouped_per_call(monkeypatch):
    from latent2mp4.presets import load_preset

    wan = load_preset("wan")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1 << 50)
    # CPU: up to CPU_BUSY_LATENT_PIXELS latent positions (32x32) per call.
    assert memory.chunk_frames(wan, 16, 16, torch.float32, None, cpu) == 4
    assert memory.chunk_frames(wan, 8, 8, torch.float32, None, cpu) == 8  # capped
    assert memory.chunk_frames(wan, 32, 32, torch.float32, None, cpu) == 1
    assert memory.chunk_frames(wan, 60, 104, torch.float32, None, cpu) == 1
    # GPU: 128x128 frames grouped up to BUSY_PIXELS (832x480 -> 25 frames), capped at 8 per call.
    assert memory.chunk_frames(wan, 16, 16, torch.bfloat16, None, cuda) == 8
    assert memory.chunk_frames(wan, 30, 52, torch.bfloat16, None, cuda) == 4  # 416x240
    assert memory.chunk_frames(wan, 60, 104, torch.bfloat16, None, cuda) == 1  # 832x480 alone
    per_frame = memory.estimate(wan, 16, 16, torch.bfloat16, None).bytes
    monkeypatch.setattr(
        memory, "available_bytes", lambda device: int(3.5 * per_frame / memory.BUDGET_SHARE)
    )
    assert memory.chunk_frames(wan, 16, 16, torch.bfloat16, None, cuda) == 3  # memory decides
    assert memory.chunk_frames(wan, 16, 16, torch.bfloat16, None, cpu) == 3


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_on_a_cpu_without_bf16_units_says_it_will_be_slow(tmp_path, monkeypatch, fast):
    from latent2mp4 import device

    monkeypatch.setattr(device, "fast_bf16", lambda d: fast)
    save_file({"latents": latents((1, 16, 2, 4, 4))}, str(tmp_path / "z.safetensors"))
    for dtype, expect in (("bf16", not fast), ("fp32", False), ("auto", False)):
        job = plan(tmp_path / "z.safetensors", DecodeOptions(model="wan", dtype=dtype))
        said = any("far slower than fp32" in n for n in job.notes)
        assert said == expect, (dtype, fast, job.notes)
