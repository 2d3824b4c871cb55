"""Decode modes: pipelines whose video is not one `vae.decode` of the whole clip, as data.

Some pipelines decode parts of their latents as separate clips (each with a fresh causal state)
and join the pixels. A preset names such a mode in `decode_mode:`; here it becomes a list of
`Piece`s (which latent frames form each clip, what to cut, what to cross-fade) that any family's
decoder streams through `stream_pieces`. No model or family is known here.

- `endpoint-tail` (ChronoEdit with temporal reasoning, pipeline_chronoedit.py): with more than
  two latent frames, the frames of all but the last latent, then those of the two-frame clip
  [first, last] after its first frame. Two or fewer: one plain clip.
- `soft-append` (HunyuanVideo-FramePack, pipeline_hunyuan_video_framepack.py): the clip grew
  by sections of `section` latent frames; each was decoded together with its neighbour section
  (and the image latent at the clip's start) and laid over the video so far with a linear
  cross-fade of `(section - 1) * temporal_ratio + 1` frames. `order` is the sampling order:
  `backward` (inverted anti-drifting, FramePackI2V_HY: sections generated from the end) or
  `forward` (vanilla, FramePack-F1: from the start, after the image latent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from latent2mp4.engine import LatentSource

Kind = Literal["endpoint-tail", "soft-append"]
KINDS = ("endpoint-tail", "soft-append")


@dataclass(frozen=True)
class Piece:
    """Latent frames decoded together as one clip, and how its frames join the video."""

    frames: tuple[int, ...]  # latent frame indices, in decode order
    drop: int = 0  # leading decoded frames discarded
    blend: int = 0  # leading frames cross-faded with the previous piece's last ones


@dataclass(frozen=True)
class DecodeMode:
    kind: Kind
    section: int = 9  # soft-append: latent frames per generated section (latent_window_size)
    order: Literal["forward", "backward"] = "backward"  # soft-append: the sampling order

    @classmethod
    def from_mapping(cls, d: Any) -> DecodeMode:
        if not isinstance(d, dict):
            raise TypeError("decode_mode must be a mapping with a kind")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown decode_mode keys {sorted(unknown)}")
        mode = cls(**d)
        if mode.kind not in KINDS:
            raise ValueError(f"decode_mode kind must be one of {', '.join(KINDS)}, not {mode.kind}")
        if mode.order not in ("forward", "backward"):
            raise ValueError(f"decode_mode order must be forward or backward, not {mode.order}")
        if not isinstance(mode.section, int) or mode.section < 1:
            raise ValueError(f"decode_mode section must be a whole number >= 1, not {mode.section}")
        return mode

    def pieces(self, t: int, temporal_ratio: int) -> list[Piece]:
        """The clips `t` latent frames decode as (raises ValueError for a count the pipeline
        cannot have made)."""
        if self.kind == "endpoint-tail":
            if t <= 2:
                return [Piece(tuple(range(t)))]
            return [Piece(tuple(range(t - 1))), Piece((0, t - 1), drop=1)]
        ws = self.section
        n, rest = divmod(t - 1, ws)
        if rest or n < 1:
            raise ValueError(
                f"{t} latent frames are not 1 + k x {ws} (an image latent and sections of {ws}; "
                "a preset's decode_mode section sets another latent_window_size)"
            )
        if self.order == "forward":  # the image latent, then one section more per step
            spans = [(0, 1 + ws)] + [(1 + (k - 1) * ws, 1 + (k + 1) * ws) for k in range(1, n)]
        else:  # generated from the end: the k-th section and the one after it
            spans = [(t - ws, t)] + [(t - (k + 1) * ws, t - (k - 1) * ws) for k in range(1, n)]
            spans[-1] = (0, spans[-1][1] if n > 1 else t)  # the last one takes the image latent
            spans.reverse()  # time order
        overlap = (ws - 1) * temporal_ratio + 1
        return [
            Piece(tuple(range(a, b)), blend=overlap if i else 0) for i, (a, b) in enumerate(spans)
        ]


@dataclass(frozen=True)
class Selection:
    """Some latent frames of a source, in a given order, as a `LatentSource`."""

    source: LatentSource
    frames: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        b, c, _, h, w = self.source.shape
        return (b, c, len(self.frames), h, w)

    def read(self, start: int, stop: int) -> Tensor:
        wanted = self.frames[start:stop]
        runs: list[tuple[int, int]] = []  # consecutive frames are read at once
        for i in wanted:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        parts = [self.source.read(a, b) for a, b in runs]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 2)


def cross_fade(earlier: Tensor, later: Tensor) -> Tensor:
    """The pipeline's soft append over the overlap: the earlier clip's weight falls linearly
    from 1 to 0 (`torch.linspace`), the later one's rises; in the frames' dtype."""
    n = earlier.shape[2]
    w = torch.linspace(1, 0, n, dtype=earlier.dtype, device=earlier.device).view(1, 1, -1, 1, 1)
    return w * earlier + (1 - w) * later


def stream_pieces(
    decode: Callable[[LatentSource], Iterator[Tensor]],
    source: LatentSource,
    pieces: list[Piece],
) -> Iterator[Tensor]:
    """Frames `(B, 3, f, H, W)` of the pieces joined, in time order. `decode` streams one clip
    (fresh state each call). Only a piece's last frames that the next one blends are held back."""
    tail: Tensor | None = None  # the previous piece's last frames, awaiting the blend
    for i, piece in enumerate(pieces):
        keep = pieces[i + 1].blend if i + 1 < len(pieces) else 0
        skip, fade = piece.drop, piece.blend if tail is not None else 0
        held: list[Tensor] = []
        for x in decode(Selection(source, piece.frames)):
            cut = min(skip, x.shape[2])
            x, skip = x[:, :, cut:], skip - cut
            held.append(x)
            have = sum(h.shape[2] for h in held)
            if fade:
                if have < fade:
                    continue
                x = torch.cat(held, 2)
                assert tail is not None
                held, fade, tail = [cross_fade(tail, x[:, :, :fade]), x[:, :, fade:]], 0, None
            out, held = _split(held, keep)
            if out is not None:
                yield out
        assert not fade and skip == 0, "a piece decoded fewer frames than it blends or drops"
        tail = torch.cat(held, 2) if keep else None  # with keep 0 everything went out


def _split(held: list[Tensor], keep: int) -> tuple[Tensor | None, list[Tensor]]:
    """(all but the last `keep` frames, or None when there are none; the last `keep`)."""
    x = torch.cat(held, 2) if len(held) > 1 else held[0] if held else None
    if x is None or x.shape[2] <= keep:
        return None, [] if x is None else [x]
    return x[:, :, : x.shape[2] - keep], [x[:, :, x.shape[2] - keep :]] if keep else []
