"""Mochi 1 VAE decoder, weight-compatible with diffusers' `AutoencoderKLMochi` and Genmo's own."""

from latent2mp4.models.mochi.decoder import FAMILY

__all__ = ["FAMILY"]
