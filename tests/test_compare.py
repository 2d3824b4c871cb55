"""compare: metrics against analytic values and a direct SSIM, mismatches, latents, side by side."""

import csv
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import latent2mp4.sources as sources_mod
from latent2mp4 import DecodeOptions, decode_file, save_latents
from latent2mp4.compare import compare, open_all, open_frames, plot_psnr, side_by_side, write_csv
from latent2mp4.errors import InputError, OutputError, UsageError
from latent2mp4.metrics import ssim
from latent2mp4.video import EncodeOptions, read_video, write_video

from conftest import latents

LOSSLESS = EncodeOptions(fps=16, lossless=True)
PREVIEW = DecodeOptions(decoder="preview")


def clip(n: int = 9, h: int = 48, w: int = 64) -> np.ndarray:
    """`(n, h, w, 3)` uint8: gradients, a moving square and fixed texture, so SSIM has structure."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:h, 0:w]
    texture = rng.integers(-30, 31, (h, w, 3))
    out = []
    for t in range(n):
        f = np.stack([xx * 3 + t * 5, yy * 4, (xx + yy) * 2], axis=-1) % 200 + texture + 30
        f[10 : 10 + h // 3, 4 + 3 * t : 4 + 3 * t + w // 4] = (230, 40, 90)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(out)


def noisy(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, frames.shape).round()
    return np.clip(frames.astype(np.int64) + noise.astype(np.int64), 0, 255).astype(np.uint8)


def save(frames: np.ndarray, path: Path) -> Path:
    write_video(list(frames), path, LOSSLESS)
    return path


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> tuple[np.ndarray, Path]:
    frames = clip()
    return frames, save(frames, tmp_path_factory.mktemp("ref") / "ref.mkv")


def direct_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 written out: a weighted window at every valid position, two-pass moments."""
    x, y = (f.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) for f in (a, b))
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    wx, wy = sliding_window_view(x, (11, 11)), sliding_window_view(y, (11, 11))
    mx, my = (wx * win).sum((-2, -1)), (wy * win).sum((-2, -1))
    dx, dy = wx - mx[..., None, None], wy - my[..., None, None]
    vx, vy, cov = (
        ((dx * dx) * win).sum((-2, -1)),
        ((dy * dy) * win).sum((-2, -1)),
        ((dx * dy) * win).sum((-2, -1)),
    )
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(m.mean())


def test_a_video_against_itself_is_identical_without_warnings(ref):
    _, path = ref
    a, b = open_all([path, path])
    ticks = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compare(a, [b], progress=ticks.append)
    (s,) = result.summaries
    assert ticks == [1] * 9
    assert a.name == "ref.mkv" and b.name == "ref.mkv" and a.size == (48, 64)
    assert s.frames == 9 and s.identical == 9 and s.worst_frame is None
    assert s.mean_psnr == math.inf and s.min_psnr == math.inf
    assert s.mean_ssim == 1.0 and s.min_ssim == 1.0 and s.mean_mae == 0.0 and s.max_mae == 0.0
    assert all(r.psnr == math.inf and r.ssim == 1.0 and r.mae == 0.0 for r in result.rows)


def test_lossless_noisy_copy_matches_the_analytic_psnr(ref, tmp_path):
    frames, path = ref
    dirty = noisy(frames, sigma=6.0)
    diff = dirty.astype(np.float64) - frames
    mse = (diff**2).mean(axis=(1, 2, 3))
    analytic = 10 * np.log10(255.0**2 / mse)
    a, b = open_all([path, save(dirty, tmp_path / "n.mkv")])
    result = compare(a, [b])
    measured = np.array([r.psnr for r in result.rows])
    (s,) = result.summaries
    print(f"analytic mean PSNR {analytic.mean():.6f} dB, measured {s.mean_psnr:.6f} dB")
    assert np.abs(measured - analytic).max() < 0.1
    assert abs(s.mean_psnr - analytic.mean()) < 1e-9  # lossless: exact, not just close
    assert s.min_psnr == pytest.approx(analytic.min()) and s.worst_frame == int(analytic.argmin())
    assert s.mean_mae == pytest.approx(np.abs(diff).mean(axis=(1, 2, 3)).mean())
    assert s.identical == 0 and 0 < s.mean_ssim < 1


def test_ssim_falls_with_noise_and_matches_a_direct_computation(ref, tmp_path):
    frames, path = ref
    inputs = [save(noisy(frames, s, seed=2), tmp_path / f"s{s}.mkv") for s in (2, 8, 24)]
    sources = open_all([path, *inputs])
    result = compare(sources[0], sources[1:])
    means = [s.mean_ssim for s in result.summaries]
    assert 1 > means[0] > means[1] > means[2] > 0, means
    psnrs = [s.mean_psnr for s in result.summaries]
    assert psnrs[0] > psnrs[1] > psnrs[2]
    b = noisy(frames, 8, seed=2)[4]
    assert ssim(frames[4], b) == pytest.approx(direct_ssim(frames[4], b), abs=1e-10)
    row = next(r for r in result.rows if r.frame == 4 and r.input == "s8.mkv")
    assert row.ssim == pytest.approx(direct_ssim(frames[4], b), abs=1e-10)


def test_different_frame_counts_are_an_error_unless_resize(ref, tmp_path):
    frames, path = ref
    short = save(frames[:5], tmp_path / "short.mkv")
    a, b = open_all([path, short])
    with pytest.raises(UsageError) as e:
        compare(a, [b])
    msg = str(e.value)
    assert "\n" not in msg and "ref.mkv has 9 frames" in msg and "short.mkv has 5" in msg
    result = compare(a, [b], resize=True)
    assert result.summaries[0].frames == 5 and result.summaries[0].mean_psnr == math.inf
    assert "ref.mkv: compared the first 5 of its 9 frames" in result.notes


def test_different_sizes_are_an_error_unless_resize(ref, tmp_path):
    frames, path = ref
    big = save(frames.repeat(2, axis=1).repeat(2, axis=2), tmp_path / "big.mkv")
    a, b = open_all([path, big])
    with pytest.raises(
        UsageError, match=r"ref.mkv is 64x48 but .*big.mkv is 128x96; pass --resize"
    ):
        compare(a, [b])
    result = compare(a, [b], resize=True)
    (s,) = result.summaries
    # Bilinear halving samples between the 2x2 copies of each pixel: exactly the original.
    assert s.frames == 9 and s.mean_psnr == math.inf
    small = save(frames[:, ::2, ::2], tmp_path / "small.mkv")
    s = compare(a, open_all([small]), resize=True).summaries[0]
    assert 15 < s.mean_psnr < 40 and 0.3 < s.mean_ssim < 1
    assert any("resized 128x96 -> 64x48" in n for n in result.notes)


def test_unreadable_inputs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_frames(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(InputError, match="junk.mp4: ffmpeg cannot read it"):
        open_frames(junk)


def test_a_latent_file_against_its_own_preview_decode_is_identical(tmp_path, monkeypatch):
    lat = save_latents(tmp_path / "z.safetensors", latents((2, 16, 3, 4, 6)), model="wan", fps=16)
    video = tmp_path / "z.mkv"
    decode_file(lat, DecodeOptions(decoder="preview", lossless=True, out=video))
    video = tmp_path / "z-0.mkv"  # batch element 0 of two
    built = []
    build = sources_mod.Decoder

    def counting(opts, preset):
        built.append(preset)
        return build(opts, preset)

    monkeypatch.setattr(sources_mod, "Decoder", counting)
    lat2 = save_latents(tmp_path / "y.safetensors", latents((16, 3, 4, 6), seed=3), model="wan")
    z, y, v = open_all([lat, lat2, video], PREVIEW)
    assert len(built) == 1  # one decoder serves both latent files
    assert (z.count, z.size, z.fps) == (9, (32, 48), 16.0) and (v.count, v.size) == (None, (32, 48))
    assert any("holds 2 videos; using the first (z-0)" in n for n in z.notes)
    result = compare(z, [v, y])
    assert result.summaries[0].frames == 9 and result.summaries[0].mean_psnr == math.inf
    assert result.summaries[1].mean_psnr < 40
    assert result.reference == "z.safetensors"


def test_side_by_side_two_inputs_and_a_grid(ref, tmp_path):
    frames, path = ref
    other = save(noisy(frames, 10), tmp_path / "other.mkv")
    a, b = open_all([path, other])
    plain = side_by_side([a, b], tmp_path / "sbs.mkv", LOSSLESS, labels=False)
    got, fps = read_video(tmp_path / "sbs.mkv")
    assert plain.grid == (1, 2) and got.shape == (9, 48, 128, 3) and fps == 16
    assert np.array_equal(got[:, :, :64], frames) and np.array_equal(
        got[:, :, 64:], noisy(frames, 10)
    )
    labelled = side_by_side([a, b, a], tmp_path / "grid.mp4", EncodeOptions(fps=8))
    got, _ = read_video(tmp_path / "grid.mp4")
    assert labelled.grid == (2, 2) and got.shape == (9, 96, 128, 3)
    assert (labelled.video.width, labelled.video.height, labelled.video.frames) == (128, 96, 9)
    assert got[:, 48:, 64:].max() < 30  # the empty fourth tile stays black


def test_side_by_side_labels_pads_sizes_and_stops_at_the_shortest(ref, tmp_path):
    frames, path = ref
    small = save(frames[:5, :32, :40], tmp_path / "small.mkv")
    a, b = open_all([path, small])
    result = side_by_side([a, b], tmp_path / "sbs.mkv", LOSSLESS)
    got, _ = read_video(tmp_path / "sbs.mkv")
    assert got.shape == (5, 48, 128, 3) and result.video.frames == 5
    assert any("where small.mkv ended" in n for n in result.notes)
    strip = got[0, :12, :64].astype(int)
    assert (strip < frames[0, :12].astype(int) * 0.35 + 2).mean() > 0.5  # darkened strip…
    assert strip.max() > 200  # …with bright text on it
    assert np.array_equal(got[0, 12:, :64], frames[0, 12:])  # below it the picture is untouched
    assert np.array_equal(got[:, 20:40, 76:116], frames[:5, 12:32, :40])  # centred in its tile


def test_csv_and_plot(ref, tmp_path, monkeypatch):
    frames, path = ref
    a, b, c = open_all([path, path, save(noisy(frames, 5), tmp_path / "n.mkv")])
    result = compare(a, [b, c])
    out = write_csv(tmp_path / "m.csv", result)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 18 and list(rows[0]) == ["frame", "input", "psnr", "ssim", "mae"]
    assert rows[0] == {
        "frame": "0",
        "input": "ref.mkv",
        "psnr": "inf",
        "ssim": "1.000000",
        "mae": "0.0000",
    }
    assert rows[1]["input"] == "n.mkv" and 30 < float(rows[1]["psnr"]) < 50
    with pytest.raises(OutputError, match="output exists"):
        write_csv(out, result)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UsageError, match=r"pip install 'latent2mp4\[plot\]'"):
        plot_psnr(tmp_path / "p.png", result)
    assert not (tmp_path / "p.png").exists()


def test_plot_writes_a_png(ref, tmp_path):
    pytest.importorskip("matplotlib")
    frames, path = ref
    a, b, c = open_all([path, path, save(noisy(frames, 5), tmp_path / "n.mkv")])
    png = plot_psnr(tmp_path / "p.png", compare(a, [b, c]))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_outputs_are_checked_before_comparing(ref, tmp_path, cli):
    """An output that is an input is refused even with --overwrite; clashing, unwritable or
    existing outputs stop the run before any work, leaving nothing behind."""
    frames, path = ref
    b = save(noisy(frames, 5), tmp_path / "b.mkv")
    before = b.read_bytes()
    for args, code, message in (
        (["--csv", b, "--overwrite"], 2, "is one of the inputs"),
        (["--csv", tmp_path / "m.csv", "--plot", tmp_path / "m.csv"], 2, "name the same file"),
        (["--plot", tmp_path / "p.txt"], 2, "--plot"),
        (["--csv", tmp_path / "m.csv", "--side-by-side", b.with_name("x.avi")], 2, "container"),
    ):
        run = cli("compare", path, b, *args)
        assert run.exit_code == code and message in run.stderr, run.output
    (tmp_path / "s.mp4").write_bytes(b"keep")
    run = cli("compare", path, b, "--csv", tmp_path / "m.csv", "--side-by-side", tmp_path / "s.mp4")
    assert run.exit_code == 1 and "pass --overwrite" in run.stderr and "--skip" not in run.stderr
    assert not (tmp_path / "m.csv").exists() and (tmp_path / "s.mp4").read_bytes() == b"keep"
    assert b.read_bytes() == before
