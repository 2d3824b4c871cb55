"""The options of one decode call: everything `latent2mp4 decode` can be told, as data.

Its own module so that the planning (pipeline.py) and the sound path (audio.py) both read it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from latent2mp4.latents import LatentSpace
from latent2mp4.storage import as_path


@dataclass(frozen=True)
class DecodeOptions:
    """Everything `latent2mp4 decode` can be told; defaults are the CLI's defaults."""

    model: str | None = None  # preset name/alias; None: from file metadata or channel count
    preset: Path | None = None  # a user's own preset YAML (wins over model)
    vae: str | None = None  # folder, single file or HF repo id; None: the preset's repo
    out: Path | None = None  # output file (B > 1 adds -0, -1, …)
    out_dir: Path | None = None  # output folder (name from the input)
    fps: float | None = None  # None: file metadata, else preset
    key: str | None = None
    index: str | int = -1  # trajectory steps of 6-D tensors: -1, "0,-1", "::10", "all"
    layout: str | None = None  # BCFHW / BFCHW; None: preset
    latent_space: LatentSpace = "auto"
    decoder: Literal["vae", "preview", "tiny"] = "vae"  # tiny: a taehv file as --vae
    device: str = "auto"
    dtype: str = "auto"
    tile_size: int | None = None  # output pixels; None: preset
    tile_stride: int | None = None
    no_tile: bool = False
    codec: str = "h264"
    crf: int | None = None
    bitrate: str | None = None
    pix_fmt: str | None = None
    lossless: bool = False
    overwrite: bool = False
    skip_existing: bool = False
    audio: Path | None = None  # an audio file to mux in (instead of decoded audio latents)
    audio_key: str | None = None  # audio latents tensor; None: the preset's
    audio_vae: str | None = None  # audio VAE folder/file; None: beside --vae, else the hub
    vocoder: str | None = None  # vocoder folder/file; likewise
    no_audio: bool = False
    audio_codec: str | None = None  # None: AAC, FLAC with --lossless, Opus in WebM
    audio_bitrate: str | None = None  # None: 192k for lossy codecs
    # Packed LTX tokens: the generation's size (the pipeline's argument names); None: metadata
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    # Timestep-conditioned decoders (LTX 0.9.1, 0.9.5+): None takes the preset's default; the
    # noise scale defaults to the timestep when only that is given, as the pipelines do
    decode_timestep: float | None = None
    decode_noise_scale: float | None = None
    seed: int = 0  # decode noise seed (batch element b uses seed + b)
    # Latent frames per independently decoded window, for presets whose pipeline splits the
    # decode (SVD's decode_chunk_size, Helios' chunks); None: the preset's (SVD: the whole clip)
    decode_chunk_size: int | None = None

    def __post_init__(self) -> None:
        # Library callers pass plain strings as often as Paths; everything downstream wants Paths.
        for name in ("preset", "out", "out_dir", "audio"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        for name in ("out", "out_dir"):  # outputs may go to object storage (s3://…)
            value = getattr(self, name)
            if value is not None:
                flag = "--out" if name == "out" else "--out-dir"
                object.__setattr__(self, name, as_path(value, flag))
