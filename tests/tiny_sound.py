"""Tiny random sound decoders saved as diffusers folders, built with diffusers itself (the
oracle): MMAudio VAE + vocoder (Kandinsky 6), Cosmos 3's audio tokenizer, MiniMax-H3's audio
VAE. Widths, latent channels, rates and statistics differ from the releases, so the code under
test must read them from config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Parameters and buffers the default init leaves constant (Snake alphas, gains, data
    statistics) made random, so a misplaced one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "beta", "learnable_gain")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for name, b in model.named_buffers():
            if name.endswith("data_mean"):
                b.copy_(torch.randn(b.shape, generator=g))
            elif name.endswith("data_std"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def make_tiny_mmaudio(root: Path, seed: int = 0, scaling_factor: float = 0.61) -> tuple[Any, Any]:
    """`root/audio_vae` (MMAudioVAE) and `root/vocoder` (MMAudioVocoder): 6 latent channels,
    16 mel bins, 8 kHz, mel hop 16 (32 samples per latent)."""
    from diffusers import MMAudioVAE, MMAudioVocoder

    torch.manual_seed(seed)
    vae = MMAudioVAE(
        mel_bins=16, latent_channels=6, hidden_channels=8, channel_multipliers=(1, 2),
        layers_per_block=1, sample_rate=8000, n_fft=64, hop_length=16,
        scaling_factor=scaling_factor,
    ).eval()  # fmt: skip
    vocoder = MMAudioVocoder(
        num_mels=16, upsample_initial_channel=32, upsample_rates=(4, 2, 2),
        upsample_kernel_sizes=(8, 4, 4), resblock_kernel_sizes=(3, 5),
        resblock_dilation_sizes=((1, 2), (1, 3)),
    ).eval()  # fmt: skip
    _randomise(vae, seed + 1)
    _randomise(vocoder, seed + 2)
    vae.save_pretrained(root / "audio_vae")
    vocoder.save_pretrained(root / "vocoder")
    return vae, vocoder


def mmaudio_reference(vae: Any, vocoder: Any, z: torch.Tensor) -> torch.Tensor:
    """Kandinsky6TI2VAPipeline's arithmetic: mel = vae.decode(z / scaling_factor), vocoder."""
    with torch.no_grad():
        mel = vae.decode(z / vae.config.scaling_factor, return_dict=False)[0]
        return vocoder(mel, return_dict=False)[0]  # (B, 1, samples)


def make_tiny_cosmos3_audio(folder: Path, seed: int = 0) -> Any:
    """Cosmos3AVAEAudioTokenizer (encoder included, as released): 6 latent channels, stereo,
    12 kHz, strides (2, 3, 4) = 24 samples per latent."""
    from diffusers import Cosmos3AVAEAudioTokenizer

    torch.manual_seed(seed)
    tok = Cosmos3AVAEAudioTokenizer(
        sampling_rate=12000, vocoder_input_dim=6, dec_dim=4, dec_c_mults=(1, 2, 2),
        dec_strides=(2, 3, 4), dec_out_channels=2, enc_dim=4, enc_latent_dim=12,
        enc_c_mults=(1, 2), enc_strides=(2, 3), enc_n_fft=16, enc_hop_length=4,
    ).eval()  # fmt: skip
    _randomise(tok, seed + 1)
    tok.save_pretrained(folder)
    return tok


def cosmos3_reference(tok: Any, z: torch.Tensor) -> torch.Tensor:
    """Cosmos3OmniPipeline.decode_sound on one clip `(C, T)` → `(channels, samples)`."""
    with torch.no_grad():
        return tok.decode(z)


H3_RATES = (3, 2)  # 6 samples per latent


def make_tiny_h3_audio(folder: Path, seed: int = 0, original: bool = False) -> Any:
    """AutoencoderKLMiniMaxH3Audio with 4 latent channels at 6 kHz and random statistics. With
    `original`, the release's layout: model.safetensors (the same names) and a config.json
    holding only the statistics, latent width and sample rate; the kernels follow the
    release's 2u - u % 2 rule and its fixed dilations."""
    from diffusers import AutoencoderKLMiniMaxH3Audio

    g = torch.Generator().manual_seed(seed + 7)
    mean = (torch.randn(4, generator=g) * 0.5).tolist()
    std = (torch.rand(4, generator=g) + 0.5).tolist()
    kernels = tuple(2 * u - u % 2 for u in H3_RATES)
    torch.manual_seed(seed)
    vae = AutoencoderKLMiniMaxH3Audio(
        encoder_dim=4, encoder_rates=(2, 3), latent_dim=16, latent_channels=4,
        num_attention_heads=2, decoder_dim=16, decoder_rates=H3_RATES,
        decoder_kernel_sizes=kernels if original else (5, 6),
        resblock_kernel_sizes=(3, 5),
        resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)) if original else ((1, 2), (1, 3)),
        sampling_rate=6000, latents_mean=mean, latents_std=std,
    ).eval()  # fmt: skip
    _randomise(vae, seed + 1)
    if not original:
        vae.save_pretrained(folder)
        return vae
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    cfg = {"latent_channels": 4, "sample_rate": 6000, "latents_mean": mean, "latents_std": std}
    (folder / "config.json").write_text(json.dumps(cfg))
    return vae


def h3_reference(vae: Any, rows: torch.Tensor) -> torch.Tensor:
    """MiniMaxH3AudioDecodeStep on stereo rows `(2, C, L)` → `(1, 2, samples)`."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1)
    with torch.no_grad():
        audio = vae.decode(rows * std + mean, return_dict=False)[0]
    return audio.float().permute(1, 0, 2)
