"""Latent arrays as stored: shape and dtype up front, elements read by index only when asked.

Every file format latent2mp4 reads becomes a name → `StoredArray` table. safetensors and `.npy`
files stay on disk and each `take` reads just the elements it indexes (the file is opened per read,
so pages it touched are released with it and the process never maps the whole file); pickles and
`.npz` members cannot be sliced on disk and are held in memory once, still converted per chunk.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from latent2mp4.errors import InputError

Index = tuple[int | slice, ...]
SAFETENSORS_SUFFIXES = (".safetensors", ".latent")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
NUMPY_SUFFIXES = (".npy", ".npz")
LATENT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES + NUMPY_SUFFIXES
BARE = "tensor"  # the name a file holding one bare tensor or array gives it

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class StoredArray(Protocol):
    """An array whose shape and dtype are known without reading its elements."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> torch.dtype | str: ...

    def take(self, index: Index) -> Tensor:
        """The indexed elements as a CPU tensor of the stored dtype (ints drop their axis)."""
        ...


@dataclass(frozen=True)
class SafetensorsArray:
    path: Path
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype | str

    def take(self, index: Index) -> Tensor:
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_slice(self.key)[index]


@dataclass(frozen=True)
class NpyArray:
    path: Path
    shape: tuple[int, ...]
    dtype: torch.dtype | str

    def take(self, index: Index) -> Tensor:
        mapped = np.load(self.path, mmap_mode="r", allow_pickle=False)
        try:
            return torch.from_numpy(np.array(mapped[index]))
        finally:
            del mapped  # unmaps the file: its pages leave this process's memory


@dataclass(frozen=True)
class TensorArray:
    """An array in memory: a tensor, or equally shaped tensors stacked along a new axis 0."""

    parts: tuple[Tensor, ...]
    stacked: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        first = tuple(self.parts[0].shape)
        return (len(self.parts), *first) if self.stacked else first

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].dtype

    def take(self, index: Index) -> Tensor:
        if not self.stacked:
            return self.parts[0][index]
        head, rest = index[0], index[1:]
        if isinstance(head, int):
            return self.parts[head][rest]
        return torch.stack([p[rest] for p in self.parts[head]])


def in_memory(x: Tensor | np.ndarray | Sequence[Tensor]) -> TensorArray:
    """A tensor, a NumPy array or a list of equally shaped tensors (a trajectory) as an array."""
    if isinstance(x, np.ndarray):
        return TensorArray((_from_numpy(x),))
    if isinstance(x, Tensor):
        return TensorArray((x.detach(),))
    parts = tuple(_from_numpy(p) if isinstance(p, np.ndarray) else p.detach() for p in x)
    shapes = {tuple(p.shape) for p in parts}
    if not parts or len(shapes) != 1 or len({p.dtype for p in parts}) != 1:
        got = ", ".join(str(s) for s in sorted(shapes))
        raise InputError(f"a trajectory list needs equally shaped tensors of one dtype; got {got}")
    if parts[0].ndim == 4:  # steps of (C, F, H, W): give each its batch axis
        parts = tuple(p.unsqueeze(0) for p in parts)
    return TensorArray(parts, stacked=True)


def _from_numpy(a: np.ndarray) -> Tensor:
    if a.dtype.kind not in "fiub":
        raise InputError(f"a NumPy array of dtype {a.dtype} is not a latent tensor")
    return torch.from_numpy(np.ascontiguousarray(a))


# ---- files ------------------------------------------------------------------------------------


def open_arrays(path: Path) -> tuple[dict[str, StoredArray], dict[str, str]]:
    """Name → array of every tensor in a latent file, and the file's string metadata.

    Reads headers only for safetensors and `.npy`; other formats are loaded (weights-only).
    """
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return _pickle_arrays(path), {}
    if suffix == ".npy":
        return {BARE: _npy_array(path)}, {}
    if suffix == ".npz":
        return _npz_arrays(path), {}
    return _safetensors_arrays(path)


def _safetensors_arrays(path: Path) -> tuple[dict[str, StoredArray], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            arrays: dict[str, StoredArray] = {}
            for k in f.keys():
                s = f.get_slice(k)
                dtype = s.get_dtype()
                arrays[k] = SafetensorsArray(
                    path, k, tuple(s.get_shape()), _SAFETENSORS_DTYPES.get(dtype, dtype)
                )
            return arrays, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if _looks_pickled(path):
            reason = "it is a PyTorch pickle; name it .pt or re-save it with save_latents"
        raise InputError(f"{path}: not a readable safetensors file ({reason})") from None


def _looks_pickled(path: Path) -> bool:
    # torch.save writes a zip archive (PK\x03\x04) or, in the legacy format, a raw pickle (\x80).
    with path.open("rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def _numpy_dtype(dtype: np.dtype) -> torch.dtype | str:
    try:
        return torch.from_numpy(np.zeros(0, dtype)).dtype
    except TypeError:
        return str(dtype)


def _npy_array(path: Path) -> NpyArray:
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable .npy array ({_first_line(e)})") from None
    shape, dtype = tuple(mapped.shape), _numpy_dtype(mapped.dtype)
    del mapped
    return NpyArray(path, shape, dtype)


def _npz_arrays(path: Path) -> dict[str, StoredArray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: in_memory(npz[name]) for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, InputError) as e:
        raise InputError(f"{path}: not a readable .npz archive ({_first_line(e)})") from None


def _pickle_arrays(path: Path) -> dict[str, StoredArray]:
    try:
        # weights_only refuses pickled code; map_location lets GPU-saved tensors load anywhere.
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and unpickler errors have no common base
        reason = _why(e)
        raise InputError(f"{path}: cannot load as a weights-only PyTorch file ({reason})") from None
    arrays: dict[str, StoredArray] = {}
    try:
        if isinstance(obj, Mapping):
            for name, value in obj.items():
                if isinstance(value, Mapping):  # one level of nesting: {"latents": {...}}
                    for inner, v in value.items():
                        _add(arrays, f"{name}.{inner}", v)
                else:
                    _add(arrays, str(name), value)
        else:
            _add(arrays, BARE, obj)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    if not arrays:
        raise InputError(f"{path}: holds a {type(obj).__name__} with no tensors")
    return arrays


def _add(arrays: dict[str, StoredArray], name: str, value: Any) -> None:
    if isinstance(value, Tensor | np.ndarray):
        arrays[name] = in_memory(value)
    elif isinstance(value, list | tuple) and value and all(isinstance(v, Tensor) for v in value):
        arrays[name] = in_memory(list(value))


def _why(e: Exception) -> str:
    text = str(e)
    # torch's refusal is a page of advice; the global it refused is the useful part.
    refused = re.search(r"unsupported (?:global:? )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
    if refused is None:
        return _first_line(e)
    name = refused.group(1)
    if name.startswith("diffusers."):
        return (
            f"it pickles a diffusers {name.rsplit('.', 1)[-1]}; save its tensor instead, e.g. "
            "torch.save(output.frames, path) or latent2mp4.save_latents(path, output.frames)"
        )
    return f"it pickles {name}, not just tensors"


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def dtype_name(dtype: torch.dtype | str) -> str:
    return str(dtype).removeprefix("torch.")
