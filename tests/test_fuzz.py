"""Mutated latent files: the reader and validator may only ever raise our clean errors."""

import struct
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from latent2mp4.errors import InputError, UsageError
from latent2mp4.latents import read_latent_file, select_video
from latent2mp4.presets import load_preset

from conftest import whole

WAN = load_preset("wan")
VALID = save({"latents": torch.randn(16, 2, 3, 3)}, metadata={"latent2mp4.model": "wan"})
HEADER_END = 8 + struct.unpack("<Q", VALID[:8])[0]


def check(tmp: Path, content: bytes) -> None:
    path = tmp / "f.safetensors"
    path.write_bytes(content)
    try:
        select_video(read_latent_file(path), WAN)
    except (InputError, UsageError) as e:
        assert "\n" not in str(e) and str(path) in str(e)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(VALID) - 1), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, len(VALID) - 1), st.just(0)),
    st.tuples(st.just("header"), st.integers(8, HEADER_END - 1), st.integers(32, 126)),
    st.tuples(st.just("length"), st.integers(0, 7), st.integers(0, 255)),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_files_only_raise_clean_errors(tmp_path, mutations):
    data = bytearray(VALID)
    for kind, pos, value in mutations:
        if kind == "cut":
            data = data[: min(pos, len(data))]
        elif pos < len(data):
            data[pos] = value if kind != "flip" else data[pos] ^ value
    check(tmp_path, bytes(data))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_clean_errors(tmp_path, blob):
    check(tmp_path, blob)


def test_the_unmutated_file_is_valid(tmp_path):
    (tmp_path / "ok.safetensors").write_bytes(VALID)
    z = whole(select_video(read_latent_file(tmp_path / "ok.safetensors"), WAN).view)
    assert z.shape == (1, 1, 16, 2, 3, 3)
