"""Object storage through fsspec: a real S3-compatible server (moto) on 127.0.0.1, memory://,
URL schemes nothing serves, and the extras' absence."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import latent2mp4
from latent2mp4 import storage
from latent2mp4.arrays import open_arrays
from latent2mp4.storage import RemotePath, as_path
from latent2mp4.video import read_video

from conftest import assert_one_line_error, latents

ROOT = Path(__file__).resolve().parents[1]


def put_latents(s3, bucket: str, files: dict[str, torch.Tensor], tmp: Path) -> None:
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    for key, z in files.items():
        local = tmp / "staged" / key
        local.parent.mkdir(parents=True, exist_ok=True)
        latent2mp4.save_latents(local, z, model="wan", fps=16)
        client.upload_file(str(local), bucket, key)


def local_tree(tmp: Path, files: dict[str, torch.Tensor]) -> Path:
    root = tmp / "local-in"
    for key, z in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        latent2mp4.save_latents(root / key, z, model="wan", fps=16)
    return root


FILES = {
    "runs/a.safetensors": latents((1, 16, 2, 4, 4), seed=1),
    "runs/sub/b.safetensors": latents((1, 16, 3, 4, 6), seed=2),
}


def test_urls_name_split_and_join_like_paths():
    p = as_path("s3://bucket/runs/sub/b.safetensors")
    assert isinstance(p, RemotePath) and str(p) == "s3://bucket/runs/sub/b.safetensors"
    assert str(p.parent / "b.mp4") == "s3://bucket/runs/sub/b.mp4" and p.stem == "b"
    assert str(p.parent.relative_to(as_path("s3://bucket/runs"))) == "sub"
    assert as_path(Path("s3://bucket/videos/")) == as_path("s3://bucket/videos")  # typer's Path
    with pytest.raises(TypeError):
        os.fspath(p)  # never silently a local file


def test_inputs_outputs_and_report_on_s3_equal_the_local_batch(tmp_path, s3, cli):
    put_latents(s3, "lat", FILES, tmp_path)
    (tmp_path / "bad").write_bytes(b"\x00garbage")
    s3.client().upload_file(str(tmp_path / "bad"), "lat", "runs/bad.safetensors")
    args = ("-r", "--decoder", "preview", "--lossless")
    run = cli(
        "decode", "s3://lat/runs/", *args, "--out-dir", "s3://lat/videos/",
        "--report", "s3://lat/reports/r.jsonl",
    )  # fmt: skip
    assert run.exit_code == 1 and "Traceback" not in run.output
    assert "2 ok, 0 skipped, 1 failed" in run.stdout
    keys = s3.keys("lat")
    assert [k for k in keys if k.startswith("videos/")] == ["videos/a.mp4", "videos/sub/b.mp4"]
    rows = [json.loads(x) for x in s3.client().get_object(Bucket="lat", Key="reports/r.jsonl")[
        "Body"].read().decode().splitlines()]  # fmt: skip
    assert [(r["input"], r["status"]) for r in rows] == [
        ("s3://lat/runs/a.safetensors", "ok"),
        ("s3://lat/runs/bad.safetensors", "failed"),
        ("s3://lat/runs/sub/b.safetensors", "ok"),
    ]
    assert rows[2]["outputs"] == ["s3://lat/videos/sub/b.mp4"]
    # The same files decoded locally give the same frames.
    local = cli("decode", local_tree(tmp_path, FILES) / "runs", *args, "--out-dir", tmp_path / "v")
    assert local.exit_code == 0, local.output
    s3.client().download_file("lat", "videos/sub/b.mp4", str(tmp_path / "b.mp4"))
    assert (read_video(tmp_path / "b.mp4")[0] == read_video(tmp_path / "v/sub/b.mp4")[0]).all()
    # --skip-existing checks the objects; a rerun appends to the report object.
    again = cli(
        "decode", "s3://lat/runs/", *args, "--out-dir", "s3://lat/videos/", "--skip-existing",
        "--report", "s3://lat/reports/r.jsonl",
    )  # fmt: skip
    assert "0 ok, 2 skipped, 1 failed" in again.stdout
    body = s3.client().get_object(Bucket="lat", Key="reports/r.jsonl")["Body"].read()
    assert len(body.decode().splitlines()) == 6
    # Without --overwrite or --skip-existing, an existing object is refused (one line).
    refused = cli("decode", "s3://lat/runs/a.safetensors", "--decoder", "preview",
                  "--lossless", "-o", "s3://lat/videos/a.mp4")  # fmt: skip
    assert_one_line_error(refused, 1, "s3://lat/videos/a.mp4", "output exists")
    replaced = cli("decode", "s3://lat/runs/a.safetensors", "--decoder", "preview",
                   "--lossless", "-o", "s3://lat/videos/a.mp4", "--overwrite")  # fmt: skip
    assert replaced.exit_code == 0 and "s3://lat/videos/a.mp4  5 frames" in replaced.stdout


def test_safetensors_objects_are_read_by_ranges(tmp_path, s3):
    z = latents((1, 16, 5, 4, 4), seed=3)
    put_latents(s3, "ranges", {"z.safetensors": z}, tmp_path)
    arrays, meta = open_arrays(as_path("s3://ranges/z.safetensors"))
    assert "wan" in meta.values()  # the header metadata, read from the object
    chunk = arrays["latents"].take((0, slice(None), slice(2, 4)))
    assert torch.equal(chunk, z[0, :, 2:4])  # a time range of every channel, nothing else
    # A header that lies about its byte ranges is refused like a local one.
    bad = tmp_path / "lying.safetensors"
    header = b'{"latents":{"dtype":"F32","shape":[1,16,5,4,4],"data_offsets":[0,99999]}}'
    bad.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)
    s3.client().upload_file(str(bad), "ranges", "lying.safetensors")
    with pytest.raises(latent2mp4.Latent2Mp4Error, match="not a readable safetensors file"):
        open_arrays(as_path("s3://ranges/lying.safetensors"))


def test_pickles_are_fetched_once_and_globs_list_objects(tmp_path, s3, cli):
    s3.client().create_bucket(Bucket="pick")
    torch.save({"latents": latents((1, 16, 2, 4, 4), seed=4)}, tmp_path / "p.pt")
    for key in ("in/p.pt", "in/q.pt", "in/.hidden.pt"):
        s3.client().upload_file(str(tmp_path / "p.pt"), "pick", key)
    run = cli("decode", "s3://pick/in/*.pt", "-m", "wan", "--decoder", "preview",
              "--out-dir", tmp_path / "out")  # fmt: skip
    assert run.exit_code == 0, run.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.mp4", "q.mp4"]


def test_upload_failure_leaves_no_object_and_one_clear_error(tmp_path, s3_server, s3):
    """The store goes away while ffmpeg writes: the upload fails, nothing is under the key."""
    s3.client().create_bucket(Bucket="outage")
    src = tmp_path / "long.safetensors"
    latent2mp4.save_latents(src, latents((1, 16, 24, 32, 32), seed=5), model="wan", fps=16)
    staging = tmp_path / "tmp"
    staging.mkdir()
    env = {**os.environ, **s3.env, "TMPDIR": str(staging), "PYTHONPATH": str(ROOT)}
    code = "import sys; from latent2mp4.cli import main; sys.argv[0] = 'latent2mp4'; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "decode", str(src), "--decoder", "preview",
         "-o", "s3://outage/long.mp4"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(staging.glob("latent2mp4-out-*/.long.mp4.partial-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    s3_server.stop()  # mid-encode: the upload that follows cannot reach the store
    out, err = proc.communicate(timeout=180)
    s3_server.start()
    assert proc.returncode == 1, out + err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: s3://outage/long.mp4: upload failed"), lines
    assert "nothing was written there" in lines[0]
    assert s3_server.keys("outage") == []  # no object under the final key, or any other
    assert list(staging.iterdir()) == []  # the local copy is gone too


def test_another_fsspec_protocol_through_the_same_code(tmp_path, cli):
    """memory:// (fsspec's own, in this process): inputs, --out-dir and --report."""
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    latent2mp4.save_latents(tmp_path / "m.safetensors", latents((1, 16, 2, 4, 4)), model="wan")
    mem.put_file(str(tmp_path / "m.safetensors"), "memory://bench/in/m.safetensors")
    run = cli("decode", "memory://bench/in/", "--decoder", "preview",
              "--out-dir", "memory://bench/out/", "--report", "memory://bench/r.jsonl")  # fmt: skip
    assert run.exit_code == 0, run.output
    assert mem.exists("memory://bench/out/m.mp4") and mem.size("memory://bench/out/m.mp4") > 0
    assert json.loads(mem.cat("memory://bench/r.jsonl"))["outputs"] == ["memory://bench/out/m.mp4"]


def test_unknown_url_schemes_are_usage_errors_not_local_folders(tmp_path, cli, monkeypatch):
    src = tmp_path / "z.safetensors"
    latent2mp4.save_latents(src, latents((1, 16, 2, 4, 4)), model="wan")
    monkeypatch.chdir(tmp_path)
    run = cli("decode", src, "--decoder", "preview", "--out-dir", "nosuch://bucket/videos/")
    assert_one_line_error(run, 2, "--out-dir nosuch://bucket/videos", "unknown URL scheme")
    assert not (tmp_path / "nosuch:").exists()
    run = cli("decode", "nosuch://bucket/z.safetensors", "--decoder", "preview")
    assert_one_line_error(run, 2, "unknown URL scheme nosuch://")


def test_without_the_extras_urls_and_ray_name_what_to_install(tmp_path, cli, monkeypatch):
    src = tmp_path / "z.safetensors"
    latent2mp4.save_latents(src, latents((1, 16, 2, 4, 4)), model="wan")
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "ray", None)
    storage.filesystem.cache_clear()
    run = cli("decode", src, "--decoder", "preview", "--out-dir", "s3://bucket/videos/")
    assert_one_line_error(run, 2, "pip install 'latent2mp4[s3]'")
    run = cli("decode", "s3://bucket/z.safetensors", "--decoder", "preview")
    assert_one_line_error(run, 2, "pip install 'latent2mp4[s3]'")
    run = cli("decode", src, "--decoder", "preview", "--ray", "local")
    assert_one_line_error(run, 2, "--ray needs Ray", "pip install 'latent2mp4[ray]'")


def test_the_default_install_stays_light(tmp_path):
    """A local decode imports neither Ray nor fsspec, and neither is a runtime dependency."""
    src = tmp_path / "z.safetensors"
    latent2mp4.save_latents(src, latents((1, 16, 2, 4, 4)), model="wan")
    code = (
        "import sys; from latent2mp4.cli import app; sys.argv[0] = 'latent2mp4'\n"
        "try: app()\nexcept SystemExit as e: assert not e.code, e.code\n"
        "heavy = [m for m in ('ray', 'fsspec', 's3fs', 'boto3') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code, "decode", str(src), "--decoder", "preview"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pyproject = (ROOT / "pyproject.toml").read_text()
    runtime = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "ray" not in runtime and "fsspec" not in runtime and "s3fs" not in runtime
