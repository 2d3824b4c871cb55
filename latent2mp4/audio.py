"""Sound: audio latents decoded to a waveform, or any audio file, muxed into the video.

The audio of one output is decoded whole before its frames (seconds of audio are a few MB of
samples), written as raw float32 beside the output, and handed to the ffmpeg process that
receives the frames. The frames' duration sets the output's (the audio is padded with silence or
trimmed to it) unless the preset keeps the decoded length (`audio: trim: false`, as the model's
pipeline does). Which decoder a preset's audio latents need is data: its `audio: architecture`
names a module under latent2mp4.models exporting `SOUND` (models/sound.py); nothing here knows
one.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import imageio_ffmpeg
import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from latent2mp4.arrays import StoredArray, all_finite, open_arrays
from latent2mp4.errors import InputError, UsageError, WeightsError
from latent2mp4.models.registry import get_sound
from latent2mp4.models.sound import Part, SoundArchitecture, Weights
from latent2mp4.options import DecodeOptions
from latent2mp4.presets import AudioPreset, Preset
from latent2mp4.video import AudioTrack
from latent2mp4.weights import (
    REPO_ID,
    _diffusers_files,
    _from_hub,
    _read_config,
    load_strict,
    open_tensors,
)

log = logging.getLogger(__name__)

DEFAULT_BITRATE = "192k"
LOSSLESS_AUDIO = ("flac", "alac", "pcm_s16le", "pcm_s24le", "pcm_f32le")
CODEC_NAMES = {"opus": "libopus", "mp3": "libmp3lame", "vorbis": "libvorbis"}
HIDDEN_AUDIO_KEY = "audio_latents"  # noted when a preset without sound meets it
RELEASE_WEIGHTS = "model.safetensors"  # an original release's audio folder (MiniMax-H3)
OPTION = {"vae": "--audio-vae", "vocoder": "--vocoder"}


@dataclass(frozen=True)
class AudioLatents:
    """Audio latents of a file, batched `(B, ...)` in the layout their architecture reads."""

    key: str
    tensor: Tensor
    seconds: float  # nominal duration from the preset
    trim: bool = True  # padded or trimmed to the video; False: kept as decoded


@dataclass(frozen=True)
class AudioFile:
    """An audio file given with `--audio`, probed by ffmpeg."""

    path: Path
    seconds: float
    description: str  # ffmpeg's stream line, e.g. "mp3, 44100 Hz, stereo, fltp, 128 kb/s"


AudioSource = AudioLatents | AudioFile


@dataclass(frozen=True)
class AudioResult:
    """The audio stream of one output."""

    seconds: float  # of the source, before padding or trimming to the video
    sample_rate: int | None  # None: as the --audio file has it
    codec: str
    source: str  # "audio_latents" (a tensor name) or the --audio file


# A loaded sound decoder (an nn.Module implementing SoundDecoder).
AudioModels = Any


# ---- planning (no weights) ---------------------------------------------------------------------


def plan_audio(
    path: Path, preset: Preset, opts: DecodeOptions, batch: int
) -> tuple[AudioSource | None, tuple[str, ...]]:
    """The audio each output of `path` gets, and notes; validates shapes, loads no weights."""
    if opts.no_audio:
        return None, ()
    if opts.audio is not None:
        return probe_audio_file(opts.audio), ()
    spec = preset.audio
    if spec is None:
        if opts.audio_key is not None:
            raise UsageError(f"--audio-key: the {preset.name} preset decodes no audio")
        # Only safetensors headers are free to look at; other formats are not opened again.
        if path.suffix.lower() == ".safetensors" and HIDDEN_AUDIO_KEY in _arrays(path):
            return None, (f"'{HIDDEN_AUDIO_KEY}' ignored: {preset.name} decodes no audio",)
        return None, ()
    arch = get_sound(spec.architecture)
    key = opts.audio_key or spec.key
    arrays = _arrays(path)
    if key not in arrays:
        if opts.audio_key is not None:
            have = ", ".join(sorted(arrays)) or "none"
            raise InputError(f"{path}: no tensor '{key}' (--audio-key); the file has: {have}")
        return None, (f"no audio latents ('{key}') in the file: video only",)
    a = arrays[key]
    ranks = (arch.rank, arch.rank - 1) if arch.unbatched else (arch.rank,)
    if len(a.shape) not in ranks or not (
        isinstance(a.dtype, torch.dtype) and a.dtype.is_floating_point
    ):
        raise InputError(
            f"{path}: '{key}' is {tuple(a.shape)} {a.dtype}; expected unpacked float audio "
            f"latents {arch.form}"
        )
    if 0 in a.shape:
        raise InputError(f"{path}: '{key}' has an empty dimension {tuple(a.shape)}")
    clips = a.shape[0] if len(a.shape) == arch.rank else 1
    if clips != batch:
        raise InputError(
            f"{path}: '{key}' holds {clips} clips but the video latents {batch}; each "
            "video needs its own audio (or pass --no-audio)"
        )
    seconds = latent_seconds(spec, a.shape[arch.time_axis - (arch.rank - len(a.shape))])
    if opts.decoder == "preview":
        return None, (f"'{key}' not decoded by the preview decoder: video only",)
    z = a.take((slice(None),) * len(a.shape))
    if not bool(all_finite(z)):
        raise InputError(f"{path}: '{key}' holds NaN or Inf values")
    z = z if len(a.shape) == arch.rank else z[None]
    return AudioLatents(key, z, seconds, spec.trim), ()


def latent_seconds(spec: AudioPreset, latent_frames: int) -> float:
    """Nominal duration of `latent_frames` audio latents of the preset's architecture."""
    return get_sound(spec.architecture).seconds(spec, latent_frames)


def _arrays(path: Path) -> dict[str, StoredArray]:
    """The file's arrays by name (headers only where the format allows); none for latents
    given in memory."""
    return open_arrays(path)[0] if path.is_file() else {}


DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
AUDIO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Audio: (.+)")


def probe_audio_file(path: Path) -> AudioFile:
    """Duration and first audio stream of any file ffmpeg reads; InputError if it has none."""
    if not path.is_file():
        raise InputError(f"{path}: audio file not found")
    argv = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    # Without an output ffmpeg prints the streams and exits 1; the streams are what we need.
    text = subprocess.run(argv, capture_output=True, text=True, errors="replace").stderr
    stream, duration = AUDIO_STREAM.search(text), DURATION.search(text)
    if stream is None and "Stream #" in text:
        raise InputError(f"{path}: has no audio stream")
    if stream is None or duration is None:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        why = lines[-1] if lines else "no output"
        raise InputError(f"{path}: not a readable audio file (ffmpeg: {why})")
    h, m, s = duration.groups()
    return AudioFile(path, int(h) * 3600 + int(m) * 60 + float(s), stream.group(1).strip())


# ---- weights ------------------------------------------------------------------------------------


def audio_loader(
    opts: DecodeOptions, preset: Preset, device: torch.device
) -> Callable[[], AudioModels]:
    """Loads the sound decoder on first call (only files with audio latents need it)."""
    return functools.cache(lambda: load_audio(opts, preset, device))


def load_audio(opts: DecodeOptions, preset: Preset, device: torch.device) -> AudioModels:
    """The preset's sound decoder (its audio VAE, and vocoder where it has one), float32 on
    `device`, loaded strictly. A preset without sound gets LTX-2's (the `AudioPreset`
    default)."""
    spec = preset.audio or AudioPreset()
    arch = get_sound(spec.architecture)
    configs: dict[str, dict[str, Any] | None] = {}
    weights: dict[str, Weights] = {}
    where: dict[str, str] = {}
    for part in arch.parts:
        files, cfg, where[part.role] = _locate(part, opts, spec, preset, arch)
        weights[part.role] = open_tensors(files)
        configs[part.role] = _check_class(cfg, part, where[part.role])
    try:
        decoder, loads = arch.build(configs, weights)
    except (KeyError, ValueError, TypeError) as e:
        first = next(iter(where.values()))
        raise WeightsError(f"{first}: bad audio model config ({e})") from None
    for load, part in zip(loads, arch.parts, strict=False):
        role = where[part.role]
        load_strict(load.module, load.entries, load.mapping, role, device, torch.float32)
    module = cast(nn.Module, decoder)
    module.eval()
    decoder.description = " + ".join(where.values())
    return decoder


def _check_class(config: dict[str, Any] | None, part: Part, where: str) -> dict[str, Any] | None:
    if config is None:
        return None  # a single file: the release's architecture, checked by the strict load
    cls = config.get("_class_name")
    if cls not in part.classes:
        raise WeightsError(
            f"{config.get('_source', where)}: config.json is {cls}, not {part.classes[0]}"
        )
    return config


def _locate(
    part: Part, opts: DecodeOptions, spec: AudioPreset, preset: Preset, arch: SoundArchitecture
) -> tuple[tuple[Path, ...], dict[str, Any] | None, str]:
    """Files, config and a description for one part: its option (--audio-vae / --vocoder: a
    folder or file), else its subfolder of the pipeline folder --vae names (or of its parent,
    for `pipeline/vae`), a whole checkpoint given as --vae, else the preset's hub repo."""
    explicit = opts.audio_vae if part.role == "vae" else opts.vocoder
    subfolder = spec.vae_subfolder if part.role == "vae" else spec.vocoder_subfolder
    if explicit is not None:
        return _files_at(Path(explicit).expanduser(), OPTION[part.role], part)
    if subfolder is None:
        raise UsageError(
            f"the {preset.name} preset names no {part.role} folder; pass {OPTION[part.role]}"
        )
    vae = opts.vae
    if vae is not None:
        path = Path(vae).expanduser()
        if path.is_dir():
            for root in (path, path.parent):
                if (root / subfolder).is_dir():
                    return _files_at(root / subfolder, str(root / subfolder), part)
        elif path.is_file() and _has_prefix(path, tuple(f"{f}." for f in _subfolders(spec))):
            return (path,), None, str(path)
        if path.exists():
            options = " and ".join(OPTION[p.role] for p in arch.parts)
            raise WeightsError(
                f"{path}: no {subfolder}/ beside the VAE for the audio latents; pass "
                f"{options} (folders or files), or --no-audio"
            )
    repo = vae if vae is not None and REPO_ID.match(vae) else preset.hub_repo
    try:
        source = _from_hub(repo, subfolder, default=vae is None)
    except WeightsError as e:
        raise WeightsError(f"audio latents need {subfolder}/ weights: {e}; or --no-audio") from None
    return source.files, source.config, source.description


def _subfolders(spec: AudioPreset) -> tuple[str, ...]:
    return tuple(f for f in (spec.vae_subfolder, spec.vocoder_subfolder) if f is not None)


def _files_at(
    path: Path, what: str, part: Part
) -> tuple[tuple[Path, ...], dict[str, Any] | None, str]:
    if path.is_file():
        cfg_path = path.parent / "config.json"
        config = _read_config(cfg_path) if cfg_path.is_file() else None
        return (
            (path,),
            config if config and config.get("_class_name") in part.classes else None,
            str(path),
        )
    if not path.is_dir():
        raise WeightsError(f"{path}: no such audio model file or folder ({what})")
    files = _diffusers_files(path)
    if not files and (path / RELEASE_WEIGHTS).is_file():
        files = (path / RELEASE_WEIGHTS,)  # an original release's folder
    if not files:
        raise WeightsError(f"{path}: no diffusion_pytorch_model.safetensors here ({what})")
    cfg_path = path / "config.json"
    return files, _read_config(cfg_path) if cfg_path.is_file() else None, str(path)


def _has_prefix(path: Path, prefixes: tuple[str, ...]) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            return any(k.startswith(prefixes) for k in f.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return False


# ---- decoding and muxing ----------------------------------------------------------------------


def decode_waveform(models: AudioModels, z: Tensor) -> np.ndarray:
    """One clip's audio latents `(1, ...)` → interleaved float32 samples `(N, channels)` in
    [-1, 1]."""
    dev = next(models.parameters()).device
    with torch.inference_mode():
        wave = models.waveform(z.to(dev, torch.float32))
    return wave[0].T.contiguous().cpu().numpy()


WEBM_AUDIO = ("libopus", "libvorbis")
BITRATE = re.compile(r"\d+(\.\d+)?[kKM]?")


@functools.cache
def ffmpeg_audio_encoders() -> frozenset[str]:
    """The audio encoders the bundled ffmpeg has (`ffmpeg -encoders`, lines ` A..... name`)."""
    argv = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-encoders"]
    text = subprocess.run(argv, capture_output=True, text=True, errors="replace").stdout
    return frozenset(ln.split()[1] for ln in text.splitlines() if ln.startswith(" A"))


def check_audio_options(opts: DecodeOptions, suffix: str) -> None:
    """--audio-codec/--audio-bitrate that ffmpeg would refuse only after the decoding started."""
    if opts.audio_bitrate is not None and not BITRATE.fullmatch(opts.audio_bitrate):
        raise UsageError(f"--audio-bitrate must look like 192k, not {opts.audio_bitrate!r}")
    if opts.audio_codec is None:
        return
    codec, _ = audio_codec(opts, suffix)
    if codec not in ffmpeg_audio_encoders():
        raise UsageError(f"--audio-codec {opts.audio_codec}: ffmpeg has no such audio encoder")
    if suffix.lower() == ".webm" and codec not in WEBM_AUDIO:
        raise UsageError(f"{opts.audio_codec} audio does not go in .webm files; use opus")
    if codec == "libvorbis" and suffix.lower() in (".mp4", ".mov"):
        raise UsageError(f"vorbis audio does not go in {suffix} files; use .mkv or .webm")


def audio_codec(opts: DecodeOptions, suffix: str) -> tuple[str, str | None]:
    """ffmpeg audio encoder and bitrate: --audio-codec, else FLAC for --lossless, Opus in WebM,
    AAC at 192 kb/s otherwise."""
    if opts.audio_codec:
        codec = CODEC_NAMES.get(opts.audio_codec, opts.audio_codec)
    elif opts.lossless:
        codec = "flac"
    elif suffix.lower() == ".webm":
        codec = "libopus"
    else:
        codec = "aac"
    return codec, None if codec in LOSSLESS_AUDIO else opts.audio_bitrate or DEFAULT_BITRATE


@contextmanager
def audio_track(
    source: AudioSource | None,
    batch: int,
    load: Callable[[], AudioModels] | None,
    out: Path,
    seconds: float,
    opts: DecodeOptions,
) -> Iterator[tuple[AudioTrack | None, AudioResult | None, tuple[str, ...]]]:
    """The track (a temporary file beside `out`, removed afterwards) for batch element `batch`
    of a video lasting `seconds`, its result record and a note on padding or trimming."""
    if source is None:
        yield None, None, ()
        return
    codec, bitrate = audio_codec(opts, out.suffix)
    if isinstance(source, AudioFile):
        track = AudioTrack(source.path, (), codec, bitrate, seconds)
        yield (
            track,
            AudioResult(source.seconds, None, codec, str(source.path)),
            (_fit_note(source.seconds, seconds),),
        )
        return
    if load is None:
        raise UsageError("the preview decoder has no audio; pass --no-audio")
    models = load()
    clip = source.tensor[batch : batch + 1]
    wrong = models.latent_error(tuple(clip.shape))
    if wrong is not None:
        raise InputError(f"'{source.key}' {wrong} ({models.description})")
    samples = decode_waveform(models, clip)
    rate, channels = models.sample_rate, samples.shape[1]
    tmp = out.with_name(f".{out.name}.audio-{os.getpid()}.f32")
    try:
        samples.astype("<f4").tofile(tmp)
        args = ("-f", "f32le", "-ar", str(rate), "-ac", str(channels))
        audio_seconds = samples.shape[0] / rate
        result = AudioResult(audio_seconds, rate, codec, source.key)
        if source.trim:
            track = AudioTrack(tmp, args, codec, bitrate, seconds)
            note = _fit_note(audio_seconds, seconds)
        else:  # as the model's pipeline: the streams keep their own lengths
            track = AudioTrack(tmp, args, codec, bitrate, audio_seconds)
            note = _kept_note(audio_seconds, seconds)
        yield track, result, (note,)
    finally:
        tmp.unlink(missing_ok=True)


def _fit_note(audio: float, video: float) -> str:
    gap = video - audio
    head = f"audio {audio:.3f} s, video {video:.3f} s"
    if abs(gap) < 5e-4:
        return f"{head}: same length"
    if gap > 0:
        return f"{head}: audio padded with {gap:.3f} s of silence"
    return f"{head}: audio trimmed by {-gap:.3f} s"


def _kept_note(audio: float, video: float) -> str:
    gap = audio - video
    head = f"audio {audio:.3f} s, video {video:.3f} s"
    if abs(gap) < 5e-4:
        return f"{head}: same length"
    longer = "longer" if gap > 0 else "shorter"
    return f"{head}: audio kept whole as the pipeline makes it ({abs(gap):.3f} s {longer})"
