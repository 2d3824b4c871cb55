"""LTX-2 video VAE decoder, weight-compatible with diffusers' `AutoencoderKLLTX2Video`, and its
sound (the audio VAE and vocoder, `SOUND`)."""

from latent2mp4.models.ltx2.decoder import FAMILY
from latent2mp4.models.ltx2.sound import SOUND

__all__ = ["FAMILY", "SOUND"]
