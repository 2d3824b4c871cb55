import dataclasses

import pytest
import torch

from latent2mp4 import device as dev
from latent2mp4.errors import UsageError
from latent2mp4.presets import load_preset

CPU = torch.device("cpu")


@pytest.mark.parametrize("fast,expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_is_bf16_only_where_it_is_fast(monkeypatch, fast, expected):
    monkeypatch.setattr(dev, "fast_bf16", lambda d: fast)
    assert dev.pick_dtype("auto", CPU, load_preset("wan")) == expected


def test_lossless_and_fp32_presets_keep_auto_exact(monkeypatch):
    monkeypatch.setattr(dev, "fast_bf16", lambda d: True)
    wan = load_preset("wan")
    assert dev.pick_dtype("auto", CPU, wan, exact=True) == torch.float32
    assert dev.pick_dtype("auto", CPU, dataclasses.replace(wan, dtype="fp32")) == torch.float32
    assert dev.pick_dtype("bf16", CPU, wan, exact=True) == torch.bfloat16  # explicit wins


def test_fast_bf16_reads_cpu_flags(monkeypatch):
    monkeypatch.setattr(dev, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert dev.fast_bf16(CPU)
    monkeypatch.setattr(dev, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert not dev.fast_bf16(CPU)


@pytest.mark.parametrize("name", ["tpu", "cuda:0", "gpu"])
def test_bad_or_missing_devices(name):
    if torch.cuda.is_available() and name == "cuda:0":
        pytest.skip("a CUDA device is present")
    with pytest.raises(UsageError, match="--device|CUDA"):
        dev.pick_device(name)
