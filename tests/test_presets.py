from pathlib import Path

import pytest

from latent2mp4.errors import UsageError
from latent2mp4.presets import builtin_presets, load_preset

FPS = {
    "wan": 16,
    "wan2.2": 24,
    "hunyuan": 15,
    "cogvideox": 8,
    "cogvideox-5b": 8,
    "cogvideox1.5": 16,
    "skyreels-v2": 24,
    "kandinsky5": 24,
    "cosmos-predict2": 16,
    "sana-video": 16,
    "mochi": 30,
    "hunyuan1.5": 15,
    "ltx": 24,
    "ltx2": 24,
    "kandinsky6": 24,
    "cosmos3": 24,
    "minimax-h3": 24,
    "animatediff": 10,
    "animatediff-sdxl": 10,
    "latte": 10,
    "i2vgen-xl": 10,
    "zeroscope": 10,
    "svd": 7,
    "helios": 24,
    "lucy-edit": 24,
    "motif-video": 24,
    "anyflow": 16,
    "chronoedit": 16,
    "cosmos-predict2.5": 16,
    "cosmos-transfer2.5": 30,
    "longcat-video": 15,
    "consisid": 8,
    "sana-wm": 16,
    "framepack": 30,
    "framepack-f1": 30,
}


def test_every_builtin_preset_loads_with_its_fps_and_shape():
    presets = builtin_presets()
    assert set(presets) == set(FPS)
    for name, p in presets.items():
        assert p.fps == FPS[name]
        assert len(p.preview.factors) == p.latent_channels
    assert presets["wan2.2"].latent_channels == 48 and presets["wan2.2"].spatial_ratio == 16
    assert presets["cogvideox"].layout == "BFCHW" and presets["wan"].layout == "BCFHW"
    assert presets["hunyuan"].normalization.scaling_factor == 0.476986
    assert presets["cogvideox"].normalization.scaling_factor == 1.15258426
    assert presets["cogvideox-5b"].normalization.scaling_factor == 0.7
    assert len(presets["wan2.2"].normalization.mean) == 48
    mochi = presets["mochi"]  # z * std / scaling_factor + mean; 6(T-1)+1 frames
    assert len(mochi.normalization.mean) == 12 and mochi.normalization.scaling_factor == 1.0
    assert [mochi.frames_out(t) for t in (1, 2, 28)] == [1, 7, 163]
    assert presets["svd"].layout == "BFCHW" and presets["animatediff"].layout == "BCFHW"
    assert presets["animatediff-sdxl"].normalization.scaling_factor == 0.13025
    # SVD: one frame per latent, the whole clip one window unless --decode-chunk-size says
    assert presets["svd"].segment_ranges(25) == [(0, 25)]
    assert presets["svd"].segment_ranges(25, 8) == [(0, 8), (8, 16), (16, 24), (24, 25)]
    helios = presets["helios"]  # 9-latent chunks flush with the end, 33 frames each, cut to 4k+1
    assert helios.segment_ranges(19) == [(1, 10), (10, 19)]
    assert [helios.frames_out(t) for t in (9, 10, 18, 28)] == [33, 33, 65, 97]


@pytest.mark.parametrize(
    "alias,name",
    [
        ("wan2.1", "wan"),
        ("hunyuanvideo", "hunyuan"),
        ("cogvideox-2b", "cogvideox"),
        ("WAN", "wan"),
        ("mochi-1", "mochi"),
        ("hunyuanvideo1.5", "hunyuan1.5"),
        ("ltx-video", "ltx"),
        ("ltx-2", "ltx2"),
        ("modelscope", "zeroscope"),
        ("svd-xt", "svd"),
        ("helios-base", "helios"),
    ],
)
def test_aliases_resolve(alias, name):
    assert load_preset(alias).name == name


@pytest.mark.parametrize(
    "t,causal,paired", [(1, 1, 1), (2, 5, 8), (13, 49, 49), (21, 81, 81), (22, 85, 88)]
)
def test_frame_count_rules(t, causal, paired):
    assert load_preset("wan").frames_out(t) == causal
    assert load_preset("cogvideox").frames_out(t) == paired


def test_unknown_model_lists_choices():
    with pytest.raises(UsageError, match="unknown model 'sdxl'.*wan2.2"):
        load_preset("sdxl")


def test_user_preset_file(tmp_path: Path):
    text = (Path(__file__).parents[1] / "configs" / "wan.yaml").read_text()
    own = tmp_path / "mine.yaml"
    own.write_text(text.replace("name: wan", "name: mine").replace("fps: 16", "fps: 30"))
    p = load_preset(str(own))
    assert (p.name, p.fps, p.family) == ("mine", 30.0, "wan")


@pytest.mark.parametrize(
    "edit,message",
    [
        (("fps: 16", "fps: -1"), "fps"),
        (("family: wan\n", ""), "family"),
        (("layout: BCFHW", "layout: XYZ"), "layout"),
        (("spatial_ratio: 8", "spatial_ratio: 0"), "spatial_ratio must be at least 1"),
        (("latent_channels: 16", "latent_channels: 16.5"), "not a whole number"),
        (("family: wan", "family: nope"), "unknown family"),
        (("aliases: [wan2.1, wan2.2-a14b]", "aliases: wan2.1"), "aliases must be a list"),
        (("tiling:", "tilling:"), "unknown preset key 'tilling'"),
        ((" std: [", " std: [.nan, "), "finite numbers"),
        (("tiling:\n  size: ", "tiling:\n  size: 100 #"), "tiling: "),
    ],
)
def test_bad_user_presets_are_usage_errors(tmp_path: Path, edit, message):
    text = (Path(__file__).parents[1] / "configs" / "wan.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(*edit))
    with pytest.raises(UsageError, match=message):
        load_preset(str(bad))


def test_normalization_must_be_a_mapping_of_finite_numbers():
    from latent2mp4.normalization import Normalization

    with pytest.raises(UsageError, match="must be a mapping"):
        Normalization.from_mapping([1, 2], "x.yaml")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="finite"):
        Normalization.from_mapping({"scaling_factor": float("inf")}, "config.json")
