"""HunyuanVideo 1.5 VAE decoder, weight-compatible with diffusers' `AutoencoderKLHunyuanVideo15`."""

from latent2mp4.models.hunyuan15.decoder import FAMILY

__all__ = ["FAMILY"]
