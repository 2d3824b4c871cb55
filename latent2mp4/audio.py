"""Sound: LTX-2 audio latents decoded to a waveform, or any audio file, muxed into the video.

The audio of one output is decoded whole before its frames (seconds of audio are a few MB of
samples), written as raw float32 beside the output, and handed to the ffmpeg process that
receives the frames; the frames' duration sets the output's, so the audio is padded with silence
or trimmed to it.
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
from typing import TYPE_CHECKING, Any

import imageio_ffmpeg
import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from latent2mp4.arrays import StoredArray, all_finite, open_arrays
from latent2mp4.errors import InputError, UsageError, WeightsError
from latent2mp4.models.ltx2.audio import AudioVaeConfig, AudioVaeDecoder
from latent2mp4.models.ltx2.audio import rename_keys as audio_vae_keys
from latent2mp4.models.ltx2.vocoder import BweConfig, BweVocoder, Vocoder, VocoderConfig
from latent2mp4.models.ltx2.vocoder import rename_keys as vocoder_keys
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

if TYPE_CHECKING:
    from latent2mp4.pipeline import DecodeOptions

log = logging.getLogger(__name__)

AUDIO_VAE_CLASS = "AutoencoderKLLTX2Audio"
VOCODER_CLASSES = ("LTX2Vocoder", "LTX2VocoderWithBWE")
DEFAULT_BITRATE = "192k"
LOSSLESS_AUDIO = ("flac", "alac", "pcm_s16le", "pcm_s24le", "pcm_f32le")
CODEC_NAMES = {"opus": "libopus", "mp3": "libmp3lame", "vorbis": "libvorbis"}
HIDDEN_AUDIO_KEY = "audio_latents"  # noted when a preset without sound meets it


@dataclass(frozen=True)
class AudioLatents:
    """Audio latents of a file, `(B, C, L, bins)` in VAE space, as `LTX2Pipeline` returns them."""

    key: str
    tensor: Tensor
    seconds: float  # nominal duration from the preset's mel rate


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


@dataclass(frozen=True)
class AudioModels:
    vae: AudioVaeDecoder
    vocoder: nn.Module
    sample_rate: int
    description: str


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
    key = opts.audio_key or spec.key
    arrays = _arrays(path)
    if key not in arrays:
        if opts.audio_key is not None:
            have = ", ".join(sorted(arrays)) or "none"
            raise InputError(f"{path}: no tensor '{key}' (--audio-key); the file has: {have}")
        return None, (f"no audio latents ('{key}') in the file: video only",)
    a = arrays[key]
    if len(a.shape) != 4 or not (isinstance(a.dtype, torch.dtype) and a.dtype.is_floating_point):
        raise InputError(
            f"{path}: '{key}' is {tuple(a.shape)} {a.dtype}; expected unpacked float audio "
            "latents (B, C, L, bins) as LTX2Pipeline(output_type='latent') returns them"
        )
    if 0 in a.shape:
        raise InputError(f"{path}: '{key}' has an empty dimension {tuple(a.shape)}")
    if a.shape[0] != batch:
        raise InputError(
            f"{path}: '{key}' holds {a.shape[0]} clips but the video latents {batch}; each "
            "video needs its own audio (or pass --no-audio)"
        )
    seconds = latent_seconds(spec, a.shape[2])
    if opts.decoder == "preview":
        return None, (f"'{key}' not decoded by the preview decoder: video only",)
    z = a.take((slice(None),) * 4)
    if not bool(all_finite(z)):
        raise InputError(f"{path}: '{key}' holds NaN or Inf values")
    return AudioLatents(key, z, seconds), ()


def latent_seconds(spec: AudioPreset, latent_frames: int) -> float:
    """Nominal duration of `latent_frames` audio latents: 4L - 3 mel frames at `mel_rate`."""
    return max(4 * latent_frames - 3, 1) / spec.mel_rate


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
    """Loads the audio VAE and vocoder on first call (only files with audio latents need them)."""
    return functools.cache(lambda: load_audio(opts, preset, device))


def load_audio(opts: DecodeOptions, preset: Preset, device: torch.device) -> AudioModels:
    """The audio VAE decoder and vocoder, float32 on `device`, loaded strictly."""
    spec = preset.audio or AudioPreset()
    vae_files, vae_cfg, vae_where = _locate(opts.audio_vae, opts.vae, spec.vae_subfolder, preset)
    voc_files, voc_cfg, voc_where = _locate(opts.vocoder, opts.vae, spec.vocoder_subfolder, preset)
    entries = open_tensors(vae_files)
    cfg = _config(vae_cfg, (AUDIO_VAE_CLASS,), vae_where, AudioVaeConfig.from_diffusers)
    with torch.device("meta"):
        vae = AudioVaeDecoder(cfg or AudioVaeConfig())
    load_strict(vae, entries, audio_vae_keys(entries), vae_where, device, torch.float32)

    entries = open_tensors(voc_files)
    mapping = vocoder_keys(entries)
    bwe = (voc_cfg or {}).get("_class_name") == "LTX2VocoderWithBWE" or any(
        k.startswith("bwe_generator.") for k in mapping.values()
    )
    vocoder: nn.Module
    if bwe:
        bcfg = _config(voc_cfg, VOCODER_CLASSES, voc_where, BweConfig.from_diffusers)
        bcfg = bcfg or BweConfig.from_diffusers({})
        with torch.device("meta"):
            vocoder = BweVocoder(bcfg)
        rate = bcfg.output_sampling_rate
    else:
        vcfg = _config(voc_cfg, VOCODER_CLASSES, voc_where, VocoderConfig.from_diffusers)
        vcfg = vcfg or VocoderConfig(output_sampling_rate=spec.sample_rate)
        with torch.device("meta"):
            vocoder = Vocoder(vcfg)
        rate = vcfg.output_sampling_rate
    load_strict(vocoder, entries, mapping, voc_where, device, torch.float32)
    vae.eval()
    vocoder.eval()
    return AudioModels(vae, vocoder, int(rate), f"{vae_where} + {voc_where}")


def _config(
    config: dict[str, Any] | None,
    classes: tuple[str, ...],
    where: str,
    parse: Callable[[dict[str, Any]], Any],
) -> Any:
    if config is None:
        return None  # a single file: the release's architecture, checked by the strict load
    cls = config.get("_class_name")
    if cls not in classes:
        raise WeightsError(
            f"{config.get('_source', where)}: config.json is {cls}, not {classes[0]}"
        )
    try:
        return parse(config)
    except (KeyError, ValueError, TypeError) as e:
        raise WeightsError(
            f"{config.get('_source', where)}: bad audio model config ({e})"
        ) from None


def _locate(
    explicit: str | None, vae: str | None, subfolder: str, preset: Preset
) -> tuple[tuple[Path, ...], dict[str, Any] | None, str]:
    """Files, config and a description for one audio model: `explicit` (a folder or file), else
    `subfolder` of the pipeline folder --vae names (or of its parent, for `pipeline/vae`), a
    whole checkpoint given as --vae, else the preset's hub repo."""
    if explicit is not None:
        return _files_at(Path(explicit).expanduser(), f"--{subfolder.replace('_', '-')}")
    if vae is not None:
        path = Path(vae).expanduser()
        if path.is_dir():
            for root in (path, path.parent):
                if (root / subfolder).is_dir():
                    return _files_at(root / subfolder, str(root / subfolder))
        elif path.is_file() and _has_prefix(path, ("audio_vae.", "vocoder.")):
            return (path,), None, str(path)
        if path.exists():
            raise WeightsError(
                f"{path}: no {subfolder}/ beside the VAE for the audio latents; pass "
                "--audio-vae and --vocoder (folders or files), or --no-audio"
            )
    repo = vae if vae is not None and REPO_ID.match(vae) else preset.hub_repo
    try:
        source = _from_hub(repo, subfolder, default=vae is None)
    except WeightsError as e:
        raise WeightsError(f"audio latents need {subfolder}/ weights: {e}; or --no-audio") from None
    return source.files, source.config, source.description


def _files_at(path: Path, what: str) -> tuple[tuple[Path, ...], dict[str, Any] | None, str]:
    if path.is_file():
        cfg_path = path.parent / "config.json"
        config = _read_config(cfg_path) if cfg_path.is_file() else None
        classes = (AUDIO_VAE_CLASS, *VOCODER_CLASSES)
        return (
            (path,),
            config if config and config.get("_class_name") in classes else None,
            str(path),
        )
    if not path.is_dir():
        raise WeightsError(f"{path}: no such audio model file or folder ({what})")
    files = _diffusers_files(path)
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
    """Audio latents `(1, C, L, bins)` → interleaved float32 samples `(N, channels)` in [-1, 1]."""
    dev = next(models.vocoder.parameters()).device
    with torch.inference_mode():
        mel = models.vae(z.to(dev, torch.float32))
        wave = models.vocoder(mel)
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
    expected = models.vae.cfg.latent_channels
    if source.tensor.shape[1] != expected:
        raise InputError(
            f"'{source.key}' has {source.tensor.shape[1]} channels; the audio VAE "
            f"({models.description}) decodes {expected}"
        )
    samples = decode_waveform(models, source.tensor[batch : batch + 1])
    rate, channels = models.sample_rate, samples.shape[1]
    tmp = out.with_name(f".{out.name}.audio-{os.getpid()}.f32")
    try:
        samples.astype("<f4").tofile(tmp)
        args = ("-f", "f32le", "-ar", str(rate), "-ac", str(channels))
        audio_seconds = samples.shape[0] / rate
        result = AudioResult(audio_seconds, rate, codec, source.key)
        yield (
            AudioTrack(tmp, args, codec, bitrate, seconds),
            result,
            (_fit_note(audio_seconds, seconds),),
        )
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
