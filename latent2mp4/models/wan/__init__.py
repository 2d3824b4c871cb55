"""Wan 2.1 and Wan 2.2 (TI2V-5B) VAE decoders, weight-compatible with `AutoencoderKLWan`."""

from latent2mp4.models.wan.decoder import FAMILY

__all__ = ["FAMILY"]
