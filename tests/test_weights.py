"""Finding and strictly loading VAE weights: folders, single files, shards, the HF cache."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from latent2mp4.engine import decode_stream
from latent2mp4.errors import WeightsError
from latent2mp4.presets import load_preset
from latent2mp4.weights import load_vae, resolve_vae

from conftest import latents
from tiny_wan import make_tiny_wan

WAN = load_preset("wan")
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wan") / "vae"
    make_tiny_wan(path, "2.1")
    return path


def decode(spec: str, dtype=torch.float32) -> torch.Tensor:
    vae = load_vae(resolve_vae(spec, WAN), WAN, "cpu", dtype)
    z = latents((1, 16, 2, 4, 4), seed=3)
    return torch.cat(list(decode_stream(vae.decoder, z, dtype=dtype)), dim=2)


def test_folder_pipeline_folder_and_single_file_give_the_same_decoder(wan_dir, tmp_path):
    reference = decode(str(wan_dir))
    pipeline = tmp_path / "pipe"
    shutil.copytree(wan_dir, pipeline / "vae")
    (pipeline / "model_index.json").write_text("{}")
    single = tmp_path / "alone.safetensors"
    shutil.copy(wan_dir / WEIGHTS, single)  # no config.json: architecture from tensor shapes
    upper = shutil.copy(single, tmp_path / "ALONE.SAFETENSORS")  # suffixes in any case
    for spec in (pipeline, single, wan_dir / WEIGHTS, upper):
        assert torch.equal(decode(str(spec)), reference), spec


def test_config_json_normalisation_overrides_the_preset(wan_dir):
    vae = load_vae(resolve_vae(str(wan_dir), WAN), WAN, "cpu", torch.float32)
    cfg = json.loads((wan_dir / "config.json").read_text())
    assert vae.normalization is not None and list(vae.normalization.mean) == cfg["latents_mean"]


def test_sharded_safetensors(wan_dir, tmp_path):
    state = load_file(str(wan_dir / WEIGHTS))
    keys = sorted(state)
    shards = {
        "part-1.safetensors": keys[: len(keys) // 2],
        "part-2.safetensors": keys[len(keys) // 2 :],
    }
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(tmp_path / name))
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    (tmp_path / f"{WEIGHTS}.index.json").write_text(json.dumps(index))
    shutil.copy(wan_dir / "config.json", tmp_path / "config.json")
    assert torch.equal(decode(str(tmp_path)), decode(str(wan_dir)))


def test_pth_checkpoint_with_wrapper_and_prefix(wan_dir, tmp_path):
    state = load_file(str(wan_dir / WEIGHTS))
    pth = tmp_path / "vae.pth"
    torch.save({"state_dict": {f"vae.{k}": v for k, v in state.items()}}, pth)
    assert torch.equal(decode(str(pth)), decode(str(wan_dir)))


class Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pth_with_arbitrary_objects_is_refused(tmp_path):
    pth = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload()}, pth)
    with pytest.raises(WeightsError, match="weights-only"):
        load_vae(resolve_vae(str(pth), WAN), WAN, "cpu", torch.float32)


def test_weights_go_to_the_requested_dtype(wan_dir):
    vae = load_vae(resolve_vae(str(wan_dir), WAN), WAN, "cpu", torch.bfloat16)
    assert {p.dtype for p in vae.decoder.parameters()} == {torch.bfloat16}
    assert not any(k.startswith("encoder.") for k in vae.decoder.state_dict())


def _edited_copy(wan_dir: Path, tmp_path: Path, edit) -> Path:
    state = load_file(str(wan_dir / WEIGHTS))
    edit(state)
    out = tmp_path / "edited"
    out.mkdir()
    save_file(state, str(out / WEIGHTS))
    shutil.copy(wan_dir / "config.json", out / "config.json")
    return out


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda s: s.pop("decoder.conv_out.bias"),
            "lacks 1 decoder weights: decoder.conv_out.bias",
        ),
        (
            lambda s: s.update({"decoder.extra.weight": torch.zeros(1)}),
            "unexpected decoder weights: decoder.extra",
        ),
        (lambda s: s.update({"decoder.conv_out.bias": torch.zeros(7)}), "do not fit"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_strict_loading_names_the_offending_keys(wan_dir, tmp_path, edit, message):
    with pytest.raises(WeightsError, match=message):
        load_vae(
            resolve_vae(str(_edited_copy(wan_dir, tmp_path, edit)), WAN), WAN, "cpu", torch.float32
        )


def test_weights_of_another_family_are_named(wan_dir, tmp_path):
    hunyuan = load_preset("hunyuan")
    with pytest.raises(WeightsError, match="AutoencoderKLWan \\(a wan VAE"):
        load_vae(resolve_vae(str(wan_dir), hunyuan), hunyuan, "cpu", torch.float32)
    single = tmp_path / "wan.safetensors"
    shutil.copy(wan_dir / WEIGHTS, single)
    with pytest.raises(WeightsError, match="look like a wan VAE"):
        load_vae(resolve_vae(str(single), hunyuan), hunyuan, "cpu", torch.float32)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    with pytest.raises(WeightsError, match="no VAE weights here"):
        resolve_vae(str(tmp_path), WAN)


def fake_hub_cache(cache: Path, repo: str, source: Path) -> None:
    """The layout huggingface_hub writes: snapshots/<revision>/ and refs/main naming it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, root / "snapshots" / revision / "vae")
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)


def test_repo_ids_and_the_preset_default_resolve_from_the_local_cache(
    wan_dir, tmp_path, monkeypatch
):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    fake_hub_cache(cache, "someone/tiny-wan", wan_dir)
    fake_hub_cache(cache, WAN.hub_repo, wan_dir)
    assert torch.equal(decode("someone/tiny-wan"), decode(str(wan_dir)))
    source = resolve_vae(None, WAN)
    assert WAN.hub_repo in source.description and source.config is not None
    with pytest.raises(WeightsError, match="not in the Hugging Face cache.*--vae"):
        resolve_vae("someone/absent", WAN)
    # A cached pipeline without the folder asked for: its other folders are not taken for it.
    fake_hub_cache(cache, "someone/no-vae", wan_dir)
    snapshot = next((cache / "models--someone--no-vae" / "snapshots").iterdir())
    (snapshot / "vae").rename(snapshot / "transformer")
    with pytest.raises(WeightsError, match="has no vae/ .*--include 'vae/\\*'"):
        resolve_vae("someone/no-vae", WAN)


def test_single_files_for_other_latents_or_without_shape_keys_are_named(wan_dir, tmp_path):
    """No config.json: the architecture comes from tensor shapes, so a Wan 2.1 file for Wan 2.2
    latents (or a file missing the tensor a shape is read from) is refused at load."""
    single = tmp_path / "wan21.safetensors"
    shutil.copy(wan_dir / WEIGHTS, single)
    wan22 = load_preset("wan2.2")
    with pytest.raises(
        WeightsError, match="x8 spatial compression and 16 latent channels .*wan2.2 decodes x16"
    ):
        load_vae(resolve_vae(str(single), wan22), wan22, "cpu", torch.float32)
    state = load_file(str(single))
    del state["decoder.conv_out.weight"]
    save_file(state, str(tmp_path / "cut.safetensors"))
    with pytest.raises(WeightsError, match="lacks the decoder weight decoder.conv_out.weight"):
        load_vae(resolve_vae(str(tmp_path / "cut.safetensors"), WAN), WAN, "cpu", torch.float32)
