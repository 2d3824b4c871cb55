"""Clip-by-clip temporal decoding of a VAE that encoded fixed-length pixel clips (MiniMax-H3).

Such an encoder reads `clip_length` pixel frames at a time and drops the last `token_drop`
latents of every clip, so neighbouring clips share latents. The decoder undoes it: it decodes
`chunk + overlap` latents per clip, drops the `pre_pad` implicit leading frames of each half of
a clip, keeps the main frames and cross-fades the clip's trailing frames into the next clip;
missing latents at the end are repeats of the last one, and the frames they make are cut.

Pure arithmetic (no torch): the preset's frame count and the family's chunk plan share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ClipPlan:
    clip_length: int  # pixel frames per encoded clip (17)
    token_drop: int  # trailing latents dropped per encoded clip (3)
    ratio: int  # pixel frames per latent frame (4)

    def __post_init__(self) -> None:
        if self.clip_length < 1 or self.token_drop < 0 or self.ratio < 1:
            raise ValueError(
                "clip_length and the temporal ratio must be positive, token_drop not negative"
            )
        if self.token_drop >= self.chunk:
            raise ValueError(f"token_drop {self.token_drop} must be below {self.chunk}")

    @property
    def chunk(self) -> int:
        """Latents one clip advances (5)."""
        return math.ceil(self.clip_length / self.ratio)

    @property
    def pre_pad(self) -> int:
        """Implicit leading frames of each decoded half-clip, dropped (3)."""
        return -self.clip_length % self.ratio

    @property
    def token_overlap(self) -> int:
        """Latents a clip shares with the next (2)."""
        return -self.token_drop % self.chunk

    @property
    def clip_latents(self) -> int:
        """Latents decoded per clip (7); the last clip is repeat-padded up to it."""
        return self.chunk + self.token_overlap

    @property
    def main_frames(self) -> int:
        """Frames a clip contributes before its trailing overlap (17)."""
        return self.chunk * self.ratio - self.pre_pad

    @property
    def overlap_frames(self) -> int:
        """Trailing frames of a clip cross-faded into the next one (5); 0 without token_drop."""
        if self.token_drop == 0:
            return 0
        second_half = self.clip_latents * self.ratio - self.chunk * self.ratio
        return max(min(second_half, self.chunk * self.ratio) - self.pre_pad, 0)

    def pad_latents(self, t: int) -> int:
        return -(t + self.token_drop) % self.chunk

    def clips(self, t: int) -> int:
        """Clips decoded for `t` latent frames (0: too short to decode)."""
        total = t + self.token_drop + self.pad_latents(t)
        return total // self.chunk - int(self.token_drop > 0)

    def pad_frames(self, t: int) -> int:
        """Frames made by the repeated latents, cut from the end. A clip's last latent covers
        only `clip_length % ratio` frames, the others `ratio`."""
        tail = self.clip_length % self.ratio
        return sum(
            tail if tail and (t + k) % self.chunk == 0 else self.ratio
            for k in range(self.pad_latents(t))
        )

    def frames_out(self, t: int) -> int:
        """Frames decoded from `t` latents: 17n+5 for 5n+2 (0 when `t` is too short)."""
        n = self.clips(t)
        if n <= 0:
            return 0
        return n * self.main_frames + self.overlap_frames - self.pad_frames(t)

    def spans(self, t: int) -> list[tuple[int, int]]:
        """Latent ranges `[start, stop)` of the clips, `stop` clipped to `t` (the decoder
        repeat-pads a short clip)."""
        return [
            (i * self.chunk, min(i * self.chunk + self.clip_latents, t))
            for i in range(self.clips(t))
        ]
