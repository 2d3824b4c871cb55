"""MiniMax-H3 video VAE decoder (a ViT), weight-compatible with diffusers' `AutoencoderKLMiniMaxH3`."""

from latent2mp4.models.minimax_h3.decoder import FAMILY

__all__ = ["FAMILY"]
