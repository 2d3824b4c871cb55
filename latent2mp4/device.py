"""Device selection and the dtype policy."""

from __future__ import annotations

import functools

import torch

from latent2mp4.errors import UsageError
from latent2mp4.presets import Preset

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU features that make bf16 convolutions faster than fp32 (oneDNN uses them).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def pick_device(name: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu or cuda[:N], not {name}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda[:N], not {name}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but PyTorch sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 decodes faster than fp32 here: CUDA with bf16, or AMX / AVX-512 BF16 CPUs."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(flag in _cpu_flags() for flag in BF16_CPU_FLAGS)


def slow_dtype_note(dtype: torch.dtype, device: torch.device) -> str | None:
    """A note when an asked-for half precision will run far slower than fp32 here.

    Without AVX-512 BF16 or AMX, oneDNN convolves bf16 with reference kernels: on such a CPU a
    3x3x3 conv measured about 100x slower in bf16 than in fp32.
    """
    if device.type != "cpu" or dtype == torch.float32 or fast_bf16(device):
        return None
    name = next(k for k, v in DTYPES.items() if v == dtype)
    return f"{name} on this CPU (no AVX-512 BF16 or AMX) is far slower than fp32; try --dtype fp32"


def pick_dtype(name: str, device: torch.device, preset: Preset, exact: bool = False) -> torch.dtype:
    """The decode dtype for `--dtype name`.

    `auto` follows the preset: a preset that names a dtype gets it; a preset with `dtype: auto`
    gets bf16 where the hardware makes it fast and fp32 elsewhere. `exact` (lossless output, where
    the user wants the reference's numbers) makes `auto` fp32.
    """
    if name == "auto":
        if exact or preset.dtype == "fp32":
            return torch.float32
        if preset.dtype == "auto":
            return torch.bfloat16 if fast_bf16(device) else torch.float32
        return DTYPES[preset.dtype]
    if name not in DTYPES:
        raise UsageError(f"--dtype must be auto, fp32, bf16 or fp16, not {name}")
    return DTYPES[name]
