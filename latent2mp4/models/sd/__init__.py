"""Stable Diffusion image VAE (AutoencoderKL) decoder family."""

from latent2mp4.models.sd.decoder import FAMILY

__all__ = ["FAMILY"]
