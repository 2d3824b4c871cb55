"""Model presets: one YAML file per model in `configs/`, parsed once into a frozen `Preset`."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from latent2mp4.clips import ClipPlan
from latent2mp4.engine import Segments, TileGrid
from latent2mp4.errors import UsageError
from latent2mp4.models.registry import get_family, get_sound
from latent2mp4.modes import DecodeMode
from latent2mp4.normalization import Normalization

# Inside the package, so an installed wheel has them; the repository's configs/ links here.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

Layout = Literal["BCFHW", "BFCHW", "BFHWC"]
FramesRule = Literal["causal", "paired", "clips"]
# The order of the (C, F, H, W) axes after the batch axis, per layout: Kandinsky 5 returns its
# latents channels-last, (B, F, H, W, C).
LAYOUT_AXES: dict[str, str] = {"BCFHW": "CFHW", "BFCHW": "FCHW", "BFHWC": "FHWC"}


@dataclass(frozen=True)
class Preview:
    """Linear latent-to-RGB factors for the weightless preview decoder (model-space latents)."""

    factors: tuple[tuple[float, ...], ...]  # one (r, g, b) row per latent channel
    bias: tuple[float, ...]  # (r, g, b); Preset._check insists on 3 values
    approximate: bool  # no published factors: colours are only a rough guess


@dataclass(frozen=True)
class Tiny:
    """Where the fitting tiny decoder (madebyollin/taehv) is published, for `--decoder tiny`.

    Which checkpoint fits is not stored: a tiny decoder for this preset has the preset's latent
    channels, patch size `spatial_ratio / 8` and temporal upscale `temporal_ratio`
    (`Preset.tiny_variant`), and loading checks the file's tensors against that.
    """

    file: str  # the released file name, e.g. taew2_1.safetensors
    url: str  # where to download it


@dataclass(frozen=True)
class AudioPreset:
    """A model that generates sound too: which decoder its audio latents need (`architecture`,
    a module under latent2mp4.models exporting SOUND) and where they and its weights are."""

    architecture: str = "ltx2"
    key: str = "audio_latents"  # tensor name in latent files
    vae_subfolder: str = "audio_vae"  # in the hub repo or a pipeline folder
    vocoder_subfolder: str | None = "vocoder"  # None: the architecture has no vocoder
    sample_rate: int = 24000  # output (Hz) for `info`; the weights' config.json wins
    mel_rate: float = 100.0  # LTX-2: mel frames per second (analysis rate / hop)
    samples_per_latent: int = 0  # others: output samples per latent frame (the decoder's hop)
    trim: bool = True  # pad or trim the sound to the video; False: keep it as decoded

    @classmethod
    def from_mapping(cls, d: Any) -> AudioPreset:
        if not isinstance(d, dict):
            raise TypeError("audio must be a mapping")
        names = set(cls.__dataclass_fields__)
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown audio keys {sorted(unknown)}; known: {sorted(names)}")
        a = cls(**d)
        if a.sample_rate <= 0 or a.mel_rate <= 0 or a.samples_per_latent < 0:
            raise ValueError("audio sample_rate and mel_rate must be positive")
        try:
            get_sound(a.architecture)
        except LookupError:
            raise ValueError(f"unknown audio architecture {a.architecture!r}") from None
        return a


@dataclass(frozen=True)
class Preset:
    name: str
    aliases: tuple[str, ...]
    description: str
    family: str  # names its module under latent2mp4.models (models.registry)
    latent_channels: int
    spatial_ratio: int
    temporal_ratio: int
    layout: Layout
    frames_rule: FramesRule
    fps: float
    normalization: Normalization
    hub_repo: str
    hub_subfolder: str
    tile_size: tuple[int, int]  # output pixels (height, width)
    tile_stride: tuple[int, int]
    dtype: str
    preview: Preview
    decode_bytes_per_pixel: int = 10000  # fp32 peak per output pixel of one tile and chunk
    chunk_frames: int = 4  # output frames decoded at once (a time chunk)
    front_pad_multiple: int = 1  # the pipeline pads latent frames at the front to this multiple
    tiny: Tiny | None = None  # the published tiny decoder, if any
    # Non-causal in time: one chunk is the whole clip when memory allows (memory.chunk_frames)
    whole_clip: bool = False
    # What `--latent-space auto` assumes for files that do not say: the diffusers pipeline's
    # output_type="latent" space, and ComfyUI's .latent space.
    pipeline_latent_space: str = "model"
    comfy_latent_space: str = "vae"
    # The axis order of ComfyUI files: (B, C, F, H, W), or for image VAEs (SD, SVD) a batch of
    # frames (F, C, H, W), which a 4-D array reads as (1, F, C, H, W).
    comfy_layout: Layout = "BCFHW"
    # The pipeline returns packed tokens (B, F*H*W, C) that --num-frames/--height/--width unpack
    packed: bool = False
    decode_timestep: float = 0.0  # timestep-conditioned decoders only
    decode_noise_scale: float | None = None  # None: equal to the timestep
    source: str = ""
    audio: AudioPreset | None = None  # the model generates sound too
    # frames_rule clips: the encoder's clip geometry (clip_length pixel frames, token_drop)
    clips: tuple[int, int] | None = None
    # Covering tiles (engine.TileGrid.cover) rather than tiles every stride.
    tile_cover: bool = False
    # The reference decodes in tiles whatever the memory: the tiles are part of the picture.
    tile_always: bool = False

    @property
    def clip_plan(self) -> ClipPlan | None:
        if self.frames_rule != "clips" or self.clips is None:
            return None
        return ClipPlan(self.clips[0], self.clips[1], self.temporal_ratio)

    # The pipeline decodes independent segments of latent frames (SVD's decode_chunk_size
    # windows, Helios' chunks); None: one clip. `--decode-chunk-size` sets their length.
    segments: Segments | None = None
    # The pipeline decodes parts of the clip separately, some overlapping or reordered, and
    # joins the pixels (modes.py: ChronoEdit, FramePack); None: no such mode
    decode_mode: DecodeMode | None = None

    @property
    def tiny_variant(self) -> tuple[int, int, int]:
        """(latent channels, patch size, temporal upscale) a tiny decoder for this preset has:
        three x2 spatial stages times the patch make the spatial ratio."""
        return self.latent_channels, self.spatial_ratio // 8, self.temporal_ratio

    def frames_out(self, t: int, window: int | None = None) -> int:
        """Frames the real VAE decodes from `t` latent frames (in the pipeline's segments of
        `window` latent frames where it has them; None: the preset's own length)."""
        segments = self.segment_ranges(t, window)
        if segments is None:
            return self._clip_frames(t)
        total = sum(self._clip_frames(b - a) for a, b in segments)
        if self.segments is not None and self.segments.trim == "causal" and total:
            r = self.temporal_ratio
            total = (total - 1) // r * r + 1
        return total

    def _clip_frames(self, t: int) -> int:
        if (plan := self.clip_plan) is not None:
            return plan.frames_out(t)
        if self.frames_rule == "paired" and t % 2 == 0:
            return self.temporal_ratio * t
        return 1 + self.temporal_ratio * (t - 1)

    def segment_ranges(self, t: int, window: int | None = None) -> list[tuple[int, int]] | None:
        """The latent ranges the pipeline decodes as separate clips; None without segments."""
        if self.segments is None:
            return None
        seg = self.segments if window is None else replace(self.segments, frames=window)
        return seg.ranges(t)

    @classmethod
    def from_yaml(cls, path: Path) -> Preset:
        try:
            d = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise UsageError(f"{path}: cannot read preset ({str(e).splitlines()[0]})") from None
        if not isinstance(d, dict):
            raise UsageError(f"{path}: a preset must be a YAML mapping")
        unknown = sorted(set(d) - PRESET_KEYS)
        if unknown:  # a misspelt optional section would otherwise do nothing, silently
            raise UsageError(f"{path}: unknown preset key {unknown[0]!r}")
        if not isinstance(d.get("aliases", []), list):
            raise UsageError(f"{path}: aliases must be a list")
        try:
            prev = d["preview"]
            preset = cls(
                name=str(d["name"]),
                aliases=tuple(d.get("aliases", ())),
                description=str(d.get("description", d["name"])),
                family=str(d["family"]),
                latent_channels=_whole(d["latent_channels"]),
                spatial_ratio=_whole(d["spatial_ratio"]),
                temporal_ratio=_whole(d.get("temporal_ratio", 4)),
                layout=d.get("layout", "BCFHW"),
                frames_rule=d.get("frames_rule", "causal"),
                fps=float(d["fps"]),
                normalization=Normalization.from_mapping(d["normalization"], str(path)),
                hub_repo=str(d["hub"]["repo"]),
                hub_subfolder=str(d["hub"].get("subfolder", "vae")),
                tile_size=_pair(d["tiling"]["size"]),
                tile_stride=_pair(d["tiling"]["stride"]),
                dtype=str(d.get("dtype", "auto")),
                preview=Preview(
                    factors=tuple(tuple(map(float, r)) for r in prev["factors"]),
                    bias=tuple(map(float, prev["bias"])),
                    approximate=bool(prev.get("approximate", False)),
                ),
                decode_bytes_per_pixel=int(d.get("memory", {}).get("bytes_per_pixel", 10000)),
                chunk_frames=int(d.get("memory", {}).get("chunk_frames", 4)),
                front_pad_multiple=int(d.get("front_pad_multiple", 1)),
                tiny=Tiny(str(d["tiny"]["file"]), str(d["tiny"]["url"])) if "tiny" in d else None,
                whole_clip=bool(d.get("memory", {}).get("whole_clip", False)),
                pipeline_latent_space=str(d.get("latent_space", {}).get("pipeline", "model")),
                comfy_latent_space=str(d.get("latent_space", {}).get("comfyui", "vae")),
                comfy_layout=d.get("latent_space", {}).get("comfyui_layout", "BCFHW"),
                packed=bool(d.get("packed", False)),
                decode_timestep=float(d.get("decode", {}).get("timestep", 0.0)),
                decode_noise_scale=_optional_float(d.get("decode", {}).get("noise_scale")),
                source=str(path),
                audio=AudioPreset.from_mapping(d["audio"]) if "audio" in d else None,
                clips=_clips(d.get("clips")),
                tile_cover=bool(d["tiling"].get("cover", False)),
                tile_always=bool(d["tiling"].get("always", False)),
                segments=_segments(d["segments"]) if "segments" in d else None,
                decode_mode=(
                    DecodeMode.from_mapping(d["decode_mode"]) if "decode_mode" in d else None
                ),
            )
        except KeyError as e:
            raise UsageError(f"{path}: preset is missing the key {e}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise UsageError(f"{path}: bad preset value ({e})") from None
        preset._check()
        return preset

    def _check(self) -> None:
        where = self.source or self.name
        if self.segments is not None and self.decode_mode is not None:
            raise UsageError(f"{where}: segments and decode_mode cannot both be set")
        if self.comfy_layout not in LAYOUT_AXES:
            raise UsageError(f"{where}: comfyui_layout must be one of {', '.join(LAYOUT_AXES)}")
        if self.layout not in LAYOUT_AXES:
            raise UsageError(
                f"{where}: layout must be one of {', '.join(LAYOUT_AXES)}, not {self.layout}"
            )
        if self.frames_rule not in ("causal", "paired", "clips"):
            raise UsageError(f"{where}: frames_rule must be causal, paired or clips")
        if (self.frames_rule == "clips") != (self.clips is not None):
            raise UsageError(f"{where}: frames_rule clips goes with a clips section, and only it")
        try:
            self.clip_plan  # noqa: B018 - validates the clip geometry
        except ValueError as e:
            raise UsageError(f"{where}: clips: {e}") from None
        for key in ("latent_channels", "spatial_ratio", "temporal_ratio", "chunk_frames",
                    "front_pad_multiple"):  # fmt: skip
            if getattr(self, key) < 1:
                raise UsageError(f"{where}: {key} must be at least 1, not {getattr(self, key)}")
        try:
            get_family(self.family)
        except LookupError:
            raise UsageError(f"{where}: unknown family {self.family!r}") from None
        rows_ok = all(len(r) == 3 for r in self.preview.factors)
        if (
            len(self.preview.factors) != self.latent_channels
            or len(self.preview.bias) != 3
            or not rows_ok
        ):
            raise UsageError(
                f"{where}: preview needs {self.latent_channels} factor rows and 3 biases"
            )
        n = self.normalization.channels
        if n is not None and n != self.latent_channels:
            raise UsageError(
                f"{where}: normalization has {n} channels, expected {self.latent_channels}"
            )
        try:
            TileGrid.from_pixels(
                self.tile_size, self.tile_stride, self.spatial_ratio, self.tile_cover
            )
        except ValueError as e:
            raise UsageError(f"{where}: tiling: {e}") from None
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise UsageError(f"{where}: dtype must be auto, fp32, bf16 or fp16")
        if self.fps <= 0:
            raise UsageError(f"{where}: fps must be positive")
        for space in (self.pipeline_latent_space, self.comfy_latent_space):
            if space not in ("model", "vae"):
                raise UsageError(f"{where}: latent_space entries must be model or vae")


PRESET_KEYS = frozenset(
    "name aliases description family latent_channels spatial_ratio temporal_ratio layout "
    "frames_rule fps normalization hub tiling dtype preview memory front_pad_multiple tiny "
    "latent_space packed decode audio clips segments decode_mode".split()
)


def _segments(d: Any) -> Segments:
    if not isinstance(d, dict) or set(d) - {"frames", "align", "trim"}:
        raise ValueError("segments takes frames, align and trim")
    frames = d.get("frames")
    return Segments(
        frames=None if frames is None else _whole(frames),
        align=str(d.get("align", "start")),
        trim=str(d.get("trim", "none")),
    )


def _whole(v: Any) -> int:
    """An integer field: 16.5 is refused rather than truncated."""
    if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
        raise ValueError(f"{v!r} is not a whole number")
    return int(v)


def _clips(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) != {"clip_length", "token_drop"}:
        raise ValueError("clips needs clip_length and token_drop")
    return _whole(v["clip_length"]), _whole(v["token_drop"])


def _optional_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _pair(v: int | list[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def builtin_presets() -> dict[str, Preset]:
    """All presets in `configs/`, by name."""
    return {p.name: p for p in _read_builtin_presets()}


@functools.cache
def _read_builtin_presets() -> tuple[Preset, ...]:
    # Parsed once per process: the YAML files take ~0.3 s, and a decode asks more than once.
    return tuple(Preset.from_yaml(p) for p in sorted(CONFIG_DIR.glob("*.yaml")))


def load_preset(name_or_path: str) -> Preset:
    """A built-in preset by name or alias, or a user's own YAML file."""
    path = Path(name_or_path)
    if path.suffix.lower() in (".yaml", ".yml"):
        if not path.is_file():
            raise UsageError(f"{path}: preset file not found")
        return Preset.from_yaml(path)
    presets = builtin_presets()
    key = name_or_path.lower()
    for p in presets.values():
        if key == p.name or key in p.aliases:
            return p
    names = ", ".join(sorted(presets))
    raise UsageError(
        f"unknown model '{name_or_path}'; choose one of: {names} (or --preset FILE.yaml)"
    )
