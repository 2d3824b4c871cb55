"""What every tiny decoder shares: the block kinds, the causal state and the streamed decoder.

madebyollin's tiny decoders (taehv, taesd, taesdv, taem1) are each one flat `nn.Sequential` of 2-D
layers applied frame by frame. Only two block kinds see more than one frame: a memory block
convolves each frame's features together with the previous frame's input (zeros before the
first), and a temporal grow (taehv.py) turns one frame into several. `TinyDecoder` runs any such
sequence chunk by chunk; the layout modules (`taehv`, `taesd`) only say which layers it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.clips import ClipPlan
from latent2mp4.engine import Chunk

IMAGE_CHANNELS = 3


class Layout(Protocol):
    """A tiny decoder's architecture as read off a checkpoint (frozen dataclasses in practice)."""

    @property
    def latent_channels(self) -> int: ...

    @property
    def patch_size(self) -> int: ...

    @property
    def t_upscale(self) -> int: ...

    @property
    def upscale(self) -> int: ...

    @property
    def variant(self) -> tuple[int, int, int]:
        """(latent channels, patch size, temporal upscale), as `Preset.tiny_variant`."""
        ...

    def describe(self) -> str: ...

    def layers(self) -> list[nn.Module]:
        """The checkpoint's `decoder` sequence, index for index."""
        ...


def conv3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Three 3x3 convs over (frame, previous frame) features, a residual and a ReLU."""

    remembers = True  # forward takes the previous frame's input too

    def __init__(self, n: int) -> None:
        super().__init__()
        relu = nn.ReLU(inplace=True)  # on fresh conv outputs only
        self.conv = nn.Sequential(conv3(2 * n, n), relu, conv3(n, n), relu, conv3(n, n))

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        y = self.conv(torch.cat([x, past], 1))
        return y.add_(x).relu_()


@dataclass
class TinyState:
    """Causal state of one spatial tile: each memory block's last input frame, by block index."""

    memory: dict[int, Tensor] = field(default_factory=dict)


class TinyDecoder(nn.Module):
    """Implements the engine's StreamDecoder on model-space latents.

    Output before `finalize` is `(B, 3, f, H, W)` in the references' [0, 1] scale (unclamped).
    `frames_out(T)` is the full VAE's frame count, which the leading drop reproduces.
    """

    input_space = "model"

    def __init__(
        self,
        config: Layout,
        frames_out: Callable[[int], int] | None = None,
        clips: ClipPlan | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.clips = clips
        self.decoder = nn.Sequential(*config.layers())
        t_up = config.t_upscale
        self.frames_out = frames_out or (lambda t: 1 + t_up * (t - 1))
        # Memory blocks say so (taehv's "_super" one is another class)
        self._memory = {i for i, b in enumerate(self.decoder) if getattr(b, "remembers", False)}

    @property
    def upscale(self) -> int:
        return self.config.upscale

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        if self.clips is not None:  # taeh3: one chunk per clip, its leading frames dropped
            n, cut = self.clips.chunk, self.config.t_upscale - 1
            return [Chunk(s, min(s + n, num_frames), cut) for s in range(0, num_frames, n)]
        # Every frame depends only on earlier ones, so any split gives the same frames.
        drop = self.config.t_upscale * num_frames - self.frames_out(num_frames)
        assert 0 <= drop < max(self.config.t_upscale, 1), (num_frames, drop)
        starts = range(0, num_frames, max_frames)
        return [Chunk(s, min(s + max_frames, num_frames), drop if s == 0 else 0) for s in starts]

    def new_state(self) -> TinyState:
        return TinyState()

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        assert isinstance(state, TinyState)
        b, c, t, h, w = z.shape
        x = z.transpose(1, 2).reshape(b * t, c, h, w).contiguous(memory_format=torch.channels_last)
        for i, block in enumerate(self.decoder):
            if i in self._memory:
                x = block(x, _past(x, b, state.memory, i))
            else:
                x = block(x)
        if self.config.patch_size > 1:
            x = F.pixel_shuffle(x, self.config.patch_size)
        return x.unflatten(0, (b, -1)).transpose(1, 2)

    def finalize(self, x: Tensor) -> Tensor:
        # The references' frames are clamp(0, 1) * 255, rounded. Rounding here onto the 256 levels
        # k / 127.5 - 1 lets our quantiser ((x + 1) * 127.5, rounded) land on exactly k.
        levels = (x.float().clamp(0.0, 1.0) * 255.0).round_()
        return levels / 127.5 - 1.0


def _past(x: Tensor, batch: int, memory: dict[int, Tensor], index: int) -> Tensor:
    """Each frame's previous frame, the first one's from the previous chunk (zeros at the start);
    keeps this chunk's last frames for the next. Frames stay `(B*t, C, H, W)` channels-last."""
    t = x.shape[0] // batch
    prev = memory.get(index)
    if prev is None:
        prev = torch.zeros_like(x[:batch])
    if t == 1:  # one frame per chunk: no copies (nothing writes into a block's input)
        memory[index] = x
        return prev
    memory[index] = x[t - 1 :: t].clone()
    parts = [p for b in range(batch) for p in (prev[b : b + 1], x[b * t : (b + 1) * t - 1])]
    return torch.cat(parts, 0)
