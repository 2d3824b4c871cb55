"""latent2mp4: decode saved video-diffusion latents into playable video."""

__version__ = "0.1.0"

from latent2mp4.decoder import Decoder, VideoResults, decode_file, load_decoder  # noqa: E402
from latent2mp4.errors import Latent2Mp4Error  # noqa: E402
from latent2mp4.latents import read_latent_file, save_latents  # noqa: E402
from latent2mp4.pipeline import DecodeOptions, VideoResult  # noqa: E402
from latent2mp4.presets import Preset, load_preset  # noqa: E402

__all__ = [
    "DecodeOptions",
    "Decoder",
    "Latent2Mp4Error",
    "Preset",
    "VideoResult",
    "VideoResults",
    "__version__",
    "decode_file",
    "load_decoder",
    "load_preset",
    "read_latent_file",
    "save_latents",
]
