"""The generic engine with toy decoders: tiling, per-tile state, temporal blending."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from latent2mp4.engine import Chunk, TileGrid, blend, decode_stream


@dataclass
class Sum:
    total: torch.Tensor | None = None


class CausalToy:
    """Pointwise in space, causal in time: each frame adds the running sum of earlier frames."""

    upscale = 4

    def time_chunks(self, n: int, max_frames: int = 1) -> list[Chunk]:
        return [Chunk(t, t + 1) for t in range(n)]

    def new_state(self) -> Sum:
        return Sum()

    def decode_chunk(self, z: torch.Tensor, state: object) -> torch.Tensor:
        assert isinstance(state, Sum)
        frame = z.sum(1, keepdim=True)
        state.total = frame if state.total is None else state.total + frame
        x = state.total.repeat(1, 3, 1, 1, 1)
        return F.interpolate(x, scale_factor=(1, self.upscale, self.upscale), mode="nearest")

    def finalize(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_blend_matches_the_reference_formula():
    a, b = torch.randn(1, 1, 1, 6, 5), torch.randn(1, 1, 1, 6, 5)
    expected = b.clone()
    for y in range(4):
        expected[:, :, :, y] = a[:, :, :, 2 + y] * (1 - y / 4) + b[:, :, :, y] * (y / 4)
    blend(a, b, 4, dim=3)
    assert torch.equal(b, expected)


def test_tile_grid_from_pixels_validates():
    assert TileGrid.from_pixels((256, 256), (192, 192), 8) == TileGrid((32, 32), (24, 24))
    with pytest.raises(ValueError, match="multiples of 8"):
        TileGrid.from_pixels((250, 250), (192, 192), 8)
    with pytest.raises(ValueError, match="must not exceed"):
        TileGrid.from_pixels((64, 64), (128, 128), 8)


@pytest.mark.parametrize(
    "grid", [TileGrid((4, 4), (3, 3)), TileGrid((5, 3), (3, 2)), TileGrid((4, 6), (4, 6))]
)
def test_tiling_a_pointwise_causal_decoder_changes_nothing(grid):
    z = torch.randn(2, 3, 5, 11, 9)
    whole = torch.cat(list(decode_stream(CausalToy(), z)), dim=2)
    tiled = torch.cat(list(decode_stream(CausalToy(), z, grid)), dim=2)
    assert whole.shape == tiled.shape == (2, 3, 5, 44, 36)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_no_tiling_when_the_latent_fits_one_tile():
    calls = []

    class Spy(CausalToy):
        def decode_chunk(self, z, state):
            calls.append(tuple(z.shape[-2:]))
            return super().decode_chunk(z, state)

    list(decode_stream(Spy(), torch.randn(1, 2, 2, 4, 4), TileGrid((4, 4), (3, 3))))
    assert calls == [(4, 4), (4, 4)]


class Overlapping(CausalToy):
    """Temporal tiles of 3 latent frames, stride 2, one frame per latent, blended over 1 frame."""

    upscale = 1

    def time_chunks(self, n: int, max_frames: int = 1) -> list[Chunk]:
        starts = range(0, n, 2)
        return [
            Chunk(s, min(s + 3, n), blend=1 if s else 0, drop=1 if s else 0, emit=2) for s in starts
        ]

    def decode_chunk(self, z, state):
        return z[:, :3] + 100 * z.shape[2]  # frames tagged with their chunk length


def test_temporal_chunks_drop_blend_and_emit():
    z = torch.arange(6.0).view(1, 1, 6, 1, 1).repeat(1, 3, 1, 1, 1)
    frames = torch.cat(list(decode_stream(Overlapping(), z)), dim=2)[0, 0, :, 0, 0]
    # chunk [0,3): 300,301,302 → emits 300,301; chunk [2,5): 302,303,304 → drop 1 → 303,304,
    # blend(1) with weight 0 takes the previous tile's last frame (302) → emits 302,304;
    # chunk [4,6): 204,205 → drop → 205 → blend from 304 → emits 304.
    assert frames.tolist() == [300, 301, 302, 304, 304]
