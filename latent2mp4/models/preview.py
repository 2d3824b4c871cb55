"""A weightless preview: latent channels → RGB by linear factors, upsampled in space and time."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.engine import Chunk
from latent2mp4.presets import Preset


@dataclass
class PreviewState:
    prev: Tensor | None = None  # RGB of the previous latent frame at latent resolution


class PreviewDecoder(nn.Module):
    """Implements the engine's StreamDecoder on model-space latents (no weights to load).

    Each latent frame becomes `temporal_ratio` frames interpolated linearly from the previous
    one; the first latent frame is repeated and the surplus dropped so the frame count equals the
    real VAE's.
    """

    input_space = "model"
    # Buffers registered in __init__ (declared here for the type checker; nn.Module's
    # __getattr__ would otherwise type them `Tensor | Module`).
    factors: Tensor
    bias: Tensor

    def __init__(self, preset: Preset) -> None:
        super().__init__()
        self.register_buffer("factors", torch.tensor(preset.preview.factors, dtype=torch.float32))
        self.register_buffer("bias", torch.tensor(preset.preview.bias, dtype=torch.float32))
        self.ratio = preset.spatial_ratio
        self.frames_per_latent = preset.temporal_ratio
        self.frames_out = preset.frames_out

    @property
    def upscale(self) -> int:
        return self.ratio

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        first = self.frames_out(num_frames) - self.frames_per_latent * (num_frames - 1)
        drop = self.frames_per_latent - first
        return [Chunk(0, 1, drop=drop)] + [Chunk(t, t + 1) for t in range(1, num_frames)]

    def new_state(self) -> PreviewState:
        return PreviewState()

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        assert isinstance(state, PreviewState)
        rgb = torch.einsum("bcthw,cr->brthw", z.float(), self.factors)[:, :, -1]
        rgb = rgb + self.bias.view(1, 3, 1, 1)
        prev = rgb if state.prev is None else state.prev
        n = self.frames_per_latent
        steps = [prev + (rgb - prev) * (k / n) for k in range(1, n + 1)]
        state.prev = rgb
        video = torch.stack(steps, dim=2)  # (B, 3, n, h, w)
        b, c, t, h, w = video.shape
        flat = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        up = F.interpolate(flat, scale_factor=self.ratio, mode="bilinear", align_corners=False)
        return up.reshape(b, t, c, h * self.ratio, w * self.ratio).permute(0, 2, 1, 3, 4)

    def finalize(self, x: Tensor) -> Tensor:
        return x.clamp_(-1.0, 1.0)  # the chunk is this decoder's own fresh tensor
