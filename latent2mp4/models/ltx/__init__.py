"""LTX-Video 0.9.x VAE decoder, weight-compatible with diffusers' `AutoencoderKLLTXVideo`."""

from latent2mp4.models.ltx.decoder import FAMILY

__all__ = ["FAMILY"]
