import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from latent2mp4.errors import OutputError, UsageError
from latent2mp4.video import EncodeOptions, ffmpeg_argv, read_video, temp_path, write_video


def frames(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


@pytest.mark.parametrize("codec,suffix", [("h264", ".mp4"), ("h264", ".mkv"), ("ffv1", ".mkv")])
def test_lossless_is_bit_exact_at_odd_sizes(tmp_path, codec, suffix):
    src = frames(5, 37, 53)
    out = tmp_path / f"v{suffix}"
    info = write_video(src, out, EncodeOptions(fps=16, codec=codec, lossless=True))
    got, fps = read_video(out)
    assert info.frames == 5 and not info.padded and fps == 16
    assert got.shape == (5, 37, 53, 3) and np.array_equal(got, np.stack(src))


def test_default_h264_keeps_size_rate_and_bt709_colours(tmp_path):
    # Flat colour patches: a BT.601/709 matrix mix-up shifts them by far more than the tolerance.
    patches = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (128, 128, 128)]
    frame = np.zeros((48, 80, 3), np.uint8)
    for i, c in enumerate(patches):
        frame[:, i * 20 : (i + 1) * 20] = c
    out = tmp_path / "v.mp4"
    write_video([frame] * 9, out, EncodeOptions(fps=24))
    got, fps = read_video(out)
    assert got.shape == (9, 48, 80, 3) and fps == 24
    for i, c in enumerate(patches):
        centre = got[4, 10:38, i * 20 + 6 : i * 20 + 14].reshape(-1, 3).mean(0)
        assert np.abs(centre - np.array(c)).max() < 4, (c, centre)


def test_argv_states_codec_crf_colour_tags_and_never_rescales(tmp_path):
    argv = ffmpeg_argv(tmp_path / "x.mp4", 832, 480, EncodeOptions(fps=16))
    text = " ".join(argv)
    for part in (
        "-c:v libx264",
        "-crf 17",
        "-preset medium",
        "-pix_fmt yuv420p",
        "-colorspace bt709",
        "+faststart",
    ):
        assert part in text
    assert "scale=832" not in text and "out_color_matrix=bt709" in text


def test_odd_size_is_edge_padded_for_yuv420(tmp_path):
    src = frames(3, 33, 51)
    info = write_video(src, tmp_path / "v.mp4", EncodeOptions(fps=8, crf=0))
    got, _ = read_video(tmp_path / "v.mp4")
    assert info.padded and got.shape == (3, 34, 52, 3)


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError, match="output exists"):
        write_video(frames(2, 16, 16), out, EncodeOptions())
    assert out.read_bytes() == b"precious"
    write_video(frames(2, 16, 16), out, EncodeOptions(), overwrite=True)
    assert read_video(out)[0].shape[0] == 2


def test_ffmpeg_failure_carries_its_message_and_leaves_nothing(tmp_path):
    out = tmp_path / "v.mp4"
    with pytest.raises(OutputError, match="ffmpeg.*(Unknown encoder|encoder)"):
        write_video(frames(2, 16, 16), out, EncodeOptions(codec="no_such_encoder"))
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupt_mid_stream_removes_the_temporary_file(tmp_path, exc):
    out = tmp_path / "v.mp4"
    seen = []

    def gen():
        yield from frames(80, 16, 16)  # past x264's look-ahead, so the muxer opens the file
        for _ in range(100):  # give ffmpeg time to create its output
            if leftovers(tmp_path):
                break
            time.sleep(0.05)
        seen.append(leftovers(tmp_path))
        raise exc()

    with pytest.raises(exc):
        write_video(gen(), out, EncodeOptions())
    assert seen[0] == [temp_path(out).name]  # frames really were going to a temporary file
    assert not out.exists() and leftovers(tmp_path) == []


def test_container_and_option_checks(tmp_path):
    with pytest.raises(UsageError, match="container"):
        write_video(frames(1, 8, 8), tmp_path / "v.avi", EncodeOptions())
    with pytest.raises(UsageError, match="lossless"):
        write_video(frames(1, 8, 8), tmp_path / "v.webm", EncodeOptions(lossless=True))


def test_metadata_is_written(tmp_path):
    out = tmp_path / "v.mp4"
    write_video(frames(2, 16, 16), out, EncodeOptions(metadata={"latent2mp4_model": "wan"}))
    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(out)],
        capture_output=True,
        text=True,
    )
    assert "latent2mp4_model: wan" in probe.stderr


@pytest.mark.parametrize(
    "codec,suffix", [("h265", ".mp4"), ("vp9", ".webm"), ("prores", ".mov"), ("av1", ".mp4")]
)
def test_other_codecs_produce_readable_video(tmp_path, codec, suffix):
    out = tmp_path / f"v{suffix}"
    write_video(frames(3, 64, 64), out, EncodeOptions(codec=codec))
    assert read_video(out)[0].shape == (3, 64, 64, 3)


@pytest.mark.parametrize(
    "codec, suffix, lossless, expected",
    [
        ("h264", ".mp4", False, "tv, bt709, progressive"),
        ("h265", ".mp4", False, "tv, bt709, progressive"),
        ("prores", ".mov", False, "tv, bt709, progressive"),
        ("vp9", ".webm", False, "tv, bt709, progressive"),
        ("h264", ".mp4", True, "pc, gbr/bt709/bt709, progressive"),
        ("ffv1", ".mkv", True, "pc, gbr/bt709/bt709, progressive"),
    ],
)
def test_colour_tags_read_back_as_bt709(tmp_path, codec, suffix, lossless, expected):
    # ffmpeg prints one name when matrix, primaries and transfer agree (`bt709`); an RGB stream's
    # matrix is the identity, `gbr`, with BT.709 primaries and transfer.
    out = tmp_path / f"v{suffix}"
    write_video(frames(2, 16, 16), out, EncodeOptions(fps=8, codec=codec, lossless=lossless))
    line = next(
        x
        for x in subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(out)],
            capture_output=True,
            text=True,
        ).stderr.splitlines()
        if "Video:" in x
    )
    assert f"({expected})" in line, line
    assert "unknown" not in line, line
