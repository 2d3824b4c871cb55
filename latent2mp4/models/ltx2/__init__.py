"""LTX-2 video VAE decoder, weight-compatible with diffusers' `AutoencoderKLLTX2Video`."""

from latent2mp4.models.ltx2.decoder import FAMILY

__all__ = ["FAMILY"]
