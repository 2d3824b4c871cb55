"""Latent arrays as stored: shape and dtype up front, elements read by index only when asked.

Every file format latent2mp4 reads becomes a name → `StoredArray` table. safetensors and `.npy`
files stay on disk and each `take` reads just the bytes it indexes; pickles and `.npz` members
cannot be sliced on disk and are held in memory once (still converted per chunk).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import struct
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
from latent2mp4.storage import RemotePath, local_copy

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
_STORED = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
           "I8": "i1", "U8": "u1", "BOOL": "?"}  # fmt: skip


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
class RawArray:
    """A C-ordered array stored at a byte offset of a file (safetensors, `.npy`).

    Reads are plain positioned reads of just the indexed bytes, one per contiguous run (a time
    range of one channel, say): no memory map, so what was read once is the page cache's, not
    this process's, and the process's memory does not grow with the file.
    """

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype | str
    stored: str  # NumPy dtype string of the bytes as stored ("<u2" for bf16)

    def take(self, index: Index) -> Tensor:
        if not isinstance(self.dtype, torch.dtype):
            raise InputError(f"{self.path}: cannot read {self.dtype} values")
        starts, counts, keep = _box(self.shape, index)
        raw = np.dtype(self.stored)
        out = np.empty(math.prod(counts), dtype=raw)
        strides = [math.prod(self.shape[d + 1 :]) for d in range(len(self.shape))]
        # The innermost axes taken whole, plus the next one, form one contiguous run.
        k = len(self.shape)
        while k > 0 and counts[k - 1] == self.shape[k - 1]:
            k -= 1
        run = math.prod(counts[max(k - 1, 0) :])
        outer = [range(starts[d], starts[d] + counts[d]) for d in range(max(k - 1, 0))]
        base = starts[k - 1] * strides[k - 1] if k > 0 else 0
        view = memoryview(out.view(np.uint8).data)
        with self.path.open("rb", buffering=0) as f:
            for i, pos in enumerate(itertools.product(*outer)) if run else ():
                start = base + sum(p * strides[d] for d, p in enumerate(pos))
                f.seek(self.offset + start * raw.itemsize)
                chunk = view[i * run * raw.itemsize : (i + 1) * run * raw.itemsize]
                if f.readinto(chunk) != len(chunk):
                    raise InputError(f"{self.path}: the file ends early (truncated?)")
        if not raw.isnative:
            out = out.astype(raw.newbyteorder("="))
        x = torch.from_numpy(out.reshape(counts))
        if self.dtype == torch.bfloat16:
            x = x.view(torch.bfloat16)
        return x.reshape([c for c, kept in zip(counts, keep, strict=True) if kept])


def _box(shape: tuple[int, ...], index: Index) -> tuple[list[int], list[int], list[bool]]:
    """Per axis: first element, element count, and whether the axis stays (slices) or goes
    (integers). Steps other than 1 are not needed by any caller."""
    index = index + (slice(None),) * (len(shape) - len(index))
    starts, counts, keep = [], [], []
    for size, ix in zip(shape, index, strict=True):
        if isinstance(ix, int):
            if not -size <= ix < size:
                raise IndexError(f"index {ix} out of range for an axis of {size}")
            starts.append(ix % size)
            counts.append(1)
            keep.append(False)
        else:
            start, stop, step = ix.indices(size)
            assert step == 1, "strided reads are not supported"
            starts.append(start)
            counts.append(max(0, stop - start))
            keep.append(True)
    return starts, counts, keep


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
        return TensorArray((_from_tensor(x),))
    bad = [type(p).__name__ for p in x if not isinstance(p, Tensor | np.ndarray)]
    if bad:
        raise InputError(f"a trajectory list holds tensors or NumPy arrays, not {bad[0]}")
    parts = tuple(_from_numpy(p) if isinstance(p, np.ndarray) else _from_tensor(p) for p in x)
    shapes = {tuple(p.shape) for p in parts}
    if not parts or len(shapes) != 1 or len({p.dtype for p in parts}) != 1:
        got = ", ".join(str(s) for s in sorted(shapes))
        raise InputError(f"a trajectory list needs equally shaped tensors of one dtype; got {got}")
    if parts[0].ndim == 4:  # steps of (C, F, H, W): give each its batch axis
        parts = tuple(p.unsqueeze(0) for p in parts)
    return TensorArray(parts, stacked=True)


def _from_tensor(t: Tensor) -> Tensor:
    if t.is_meta:
        raise InputError("latents on the meta device hold no values")
    return t.detach()


def _from_numpy(a: np.ndarray) -> Tensor:
    if a.dtype.kind not in "fiub":
        raise InputError(f"a NumPy array of dtype {a.dtype} is not a latent tensor")
    # torch takes native byte order only; big-endian files (`>f4`) are converted.
    return torch.from_numpy(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=")))


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
        if isinstance(path, RemotePath):  # two ranged reads: the header's size, the header
            header, size = _remote_safetensors_header(path)
            metadata = dict(header.get("__metadata__") or {})
        else:
            with safe_open(str(path), framework="pt") as f:  # validates the whole header
                metadata = dict(f.metadata() or {})
            with path.open("rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
    except (SafetensorError, OSError, ValueError, RuntimeError, struct.error) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if _looks_pickled(path):
            reason = "it is a PyTorch pickle; name it .pt or re-save it with save_latents"
        raise InputError(f"{path}: not a readable safetensors file ({reason})") from None
    arrays: dict[str, StoredArray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        code = entry["dtype"]
        dtype = _SAFETENSORS_DTYPES.get(code, code)
        stored = "<u2" if dtype == torch.bfloat16 else _STORED.get(code, "u1")
        offset = 8 + size + int(entry["data_offsets"][0])
        arrays[name] = RawArray(path, offset, tuple(entry["shape"]), dtype, stored)
    return arrays, metadata


MAX_HEADER = 100_000_000  # the limit safetensors itself enforces


def _remote_safetensors_header(path: RemotePath) -> tuple[dict[str, Any], int]:
    """The checks `safe_open` makes on a local file, made on an object without fetching it:
    the header fits the object, and each tensor's byte range matches its shape and dtype and
    lies inside the data (tensors' bytes are only ever read by ranges, later)."""
    total = path.size()
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > min(MAX_HEADER, total - 8):
            raise ValueError("header too large")
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    data = total - 8 - size
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise ValueError("metadata must map strings to strings")
            continue
        try:
            shape, (begin, end) = [int(n) for n in entry["shape"]], entry["data_offsets"]
            width = np.dtype(_STORED.get(entry["dtype"], "<u2")).itemsize
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"malformed entry for tensor {name!r}") from None
        if entry["dtype"] not in _SAFETENSORS_DTYPES or not 0 <= begin <= end <= data:
            raise ValueError(f"tensor {name!r}: invalid dtype or byte range")
        if end - begin != math.prod(shape) * width:
            raise ValueError(f"tensor {name!r}: byte range does not match its shape")
    return header, size


def _looks_pickled(path: Path) -> bool:
    # torch.save writes a zip archive (PK\x03\x04) or, in the legacy format, a raw pickle (\x80).
    with path.open("rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def _numpy_dtype(dtype: np.dtype) -> torch.dtype | str:
    try:
        return torch.from_numpy(np.zeros(0, dtype.newbyteorder("="))).dtype
    except TypeError:
        return str(dtype)


def _npy_array(path: Path) -> RawArray:
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable .npy array ({_first_line(e)})") from None
    if fortran or dtype.hasobject:
        why = "Fortran order" if fortran else "Python objects"
        raise InputError(f"{path}: not a readable .npy array ({why}; save a C-ordered array)")
    return RawArray(path, offset, tuple(shape), _numpy_dtype(dtype), dtype.str)


def _npz_arrays(path: Path) -> dict[str, StoredArray]:
    try:
        with local_copy(path) as local, np.load(local, allow_pickle=False) as npz:
            return {name: in_memory(npz[name]) for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, InputError) as e:
        raise InputError(f"{path}: not a readable .npz archive ({_first_line(e)})") from None


def _pickle_arrays(path: Path) -> dict[str, StoredArray]:
    try:
        # weights_only refuses pickled code; map_location lets GPU-saved tensors load anywhere.
        with local_copy(path) as local:  # a pickle cannot be read by ranges: fetched once
            obj = torch.load(str(local), map_location="cpu", weights_only=True)
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


# Exponent bits of each float format: all ones means Inf or NaN. Counting them on the integer
# view is several times faster than torch.isfinite on bf16/fp16 and needs no float copy.
_EXPONENT = {
    torch.bfloat16: (np.uint16, 0x7F80),
    torch.float16: (np.uint16, 0x7C00),
    torch.float32: (np.uint32, 0x7F800000),
    torch.float64: (np.uint64, 0x7FF0000000000000),
}


def all_finite(x: Tensor) -> Tensor:
    """One bool on `x`'s device: no NaN/Inf (True for non-float tensors). The extremes propagate
    NaN and show ±Inf in one reduction; `isfinite(x).all()` writes a bool per element first
    (35x slower on a CPU: a 1024-channel conv weight, 2.9 against 102 ms)."""
    if not x.is_floating_point() or x.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=x.device)
    lo, hi = torch.aminmax(x)
    return torch.isfinite(lo) & torch.isfinite(hi)


def count_nonfinite(x: Tensor) -> int:
    """NaN and Inf values in a float tensor."""
    if x.dtype not in _EXPONENT or x.device.type != "cpu":
        return int(x.numel() - torch.isfinite(x).sum())
    kind, mask = _EXPONENT[x.dtype]
    bits = x.contiguous().view(_INT_VIEW[x.dtype]).numpy().view(kind)
    return int(np.count_nonzero((bits & kind(mask)) == kind(mask)))


_INT_VIEW = {
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def dtype_name(dtype: torch.dtype | str) -> str:
    return str(dtype).removeprefix("torch.")
