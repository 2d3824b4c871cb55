"""Tiny image-VAE decoders of madebyollin/taesd and taesdv, weight-compatible with their files.

TAESD / TAESDXL (`taesd.py` `Decoder`) decode Stable Diffusion (1.x/2.x, XL) latents one frame at a
time: a soft clamp, a 3x3 conv, then three stages of three residual blocks each followed by a x2
nearest upsample and a bias-free conv, one last block and the output conv; every block keeps its
width (64 in the releases), so none has a skip conv. TAESDV (`taesdv.py`) is the same sequence,
index for index, with memory blocks: each block's first conv also sees the previous frame's
input (zeros before the first frame), so frames stay one-to-one but the result depends on the
earlier ones. Which of the two a file is, and its width, is read off its tensors.

Both take model-space latents, i.e. the UNet's (TAESD's "scale factor" is 1: no division by the
VAE's 0.18215 / 0.13025), and output [0, 1]; `TinyDecoder.finalize` rounds as the references'
video writers do (clamp(0, 1) x 255, rounded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from latent2mp4.models.tiny.blocks import IMAGE_CHANNELS, Clamp, MemBlock, conv3

__all__ = ["TaesdConfig"]

STAGES = 3  # each doubles height and width
BLOCKS = 3  # residual blocks per stage (then one more before the output conv)
OUT_INDEX = 19  # the output conv: 3 stem layers + 3 x (3 blocks, upsample, conv) + a block


class Block(nn.Module):
    """TAESD's residual block: three 3x3 convs with ReLUs, plus the input, then a ReLU."""

    def __init__(self, n: int) -> None:
        super().__init__()
        relu = nn.ReLU(inplace=True)  # on fresh conv outputs only
        self.conv = nn.Sequential(conv3(n, n), relu, conv3(n, n), relu, conv3(n, n))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x).add_(x).relu_()


@dataclass(frozen=True)
class TaesdConfig:
    """TAESD-layout decoder architecture, as the tensors of a checkpoint describe it."""

    latent_channels: int = 4
    width: int = 64
    memory: bool = False  # TAESDV: blocks see the previous frame

    patch_size = 1
    t_upscale = 1

    @property
    def upscale(self) -> int:
        return 2**STAGES

    @property
    def variant(self) -> tuple[int, int, int]:
        return self.latent_channels, self.patch_size, self.t_upscale

    def describe(self) -> str:
        kind = "TAESDV, frame memory" if self.memory else "TAESD, per frame"
        return f"tiny {kind} decoder: {self.latent_channels} channels"

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> TaesdConfig:
        """Read the variant off `decoder.N.*` tensor shapes (raises KeyError/ValueError)."""
        width, channels = shapes["decoder.1.weight"][:2]
        first = shapes["decoder.3.conv.0.weight"][1]
        if first not in (width, 2 * width):
            raise ValueError(f"the first block takes {first} channels, not {width} or {2 * width}")
        return cls(channels, width, first == 2 * width)

    def layers(self) -> list[nn.Module]:
        """The checkpoint's `decoder` sequence, index for index (taesd.py `Decoder`)."""
        n = self.width
        relu = nn.ReLU(inplace=True)  # each follows a conv, whose output nothing else holds

        def block() -> nn.Module:
            return MemBlock(n) if self.memory else Block(n)

        layers: list[nn.Module] = [Clamp(), conv3(self.latent_channels, n), relu]
        for _ in range(STAGES):
            layers += [block() for _ in range(BLOCKS)]
            layers += [nn.Upsample(scale_factor=2), conv3(n, n, bias=False)]
        layers += [block(), conv3(n, IMAGE_CHANNELS)]
        assert len(layers) == OUT_INDEX + 1
        return layers
