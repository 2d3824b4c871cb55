"""MMAudio's mel VAE and BigVGAN vocoder (Kandinsky 6's sound), weight-compatible with diffusers'
`MMAudioVAE` and `MMAudioVocoder`."""

from latent2mp4.models.mmaudio.sound import SOUND

__all__ = ["SOUND"]
