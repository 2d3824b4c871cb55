"""Batch runs over folders: outputs, failures that do not stop the batch, reports, shards."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from latent2mp4.batch import Input, collect_inputs, shard
from latent2mp4.video import read_video

from conftest import latents


def tree(root: Path) -> list[Path]:
    files = [
        root / "a.safetensors",
        root / "b.safetensors",
        root / "sub" / "c.latent",
        root / "sub" / "d.safetensors",
    ]
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        save_file({"latents": latents((16, 2, 3, 4), seed=i)}, str(f))
    (root / "notes.txt").write_text("not a latent")
    return files


def test_collect_inputs_folders_recursive_and_globs(tmp_path):
    files = tree(tmp_path)
    flat = [i.path for i in collect_inputs([tmp_path])]
    assert flat == files[:2]
    deep = [i.path for i in collect_inputs([tmp_path], recursive=True)]
    assert deep == sorted(files, key=str)
    globbed = [
        i.path
        for i in collect_inputs([str(tmp_path / "*.safetensors"), tmp_path / "a.safetensors"])
    ]
    assert globbed == files[:2]  # de-duplicated


def test_shards_are_disjoint_and_cover_everything():
    items = [Input(Path(f"{i:03d}.safetensors"), None) for i in range(23)]
    parts = [shard(items, k, 4) for k in range(1, 5)]
    assert sorted(p.path for part in parts for p in part) == [i.path for i in items]
    assert len({p.path for part in parts for p in part}) == 23


def test_batch_with_a_corrupt_file_decodes_the_rest_and_reports(tmp_path, cli):
    files = tree(tmp_path / "in")
    (tmp_path / "in" / "broken.safetensors").write_bytes(b"\x00garbage")
    report = tmp_path / "report.jsonl"
    run = cli(
        "decode",
        tmp_path / "in",
        "-r",
        "-m",
        "wan",
        "--decoder",
        "preview",
        "--out-dir",
        tmp_path / "out",
        "--report",
        report,
    )
    assert run.exit_code == 1
    assert "broken.safetensors" in run.stderr and "Traceback" not in run.output
    assert "4 ok, 0 skipped, 1 failed" in run.stdout
    outputs = sorted(
        str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.mp4")
    )
    assert outputs == ["a.mp4", "b.mp4", "sub/c.mp4", "sub/d.mp4"]  # the input tree, mirrored
    assert read_video(tmp_path / "out" / "sub" / "c.mp4")[0].shape == (5, 24, 32, 3)
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [line["status"] for line in lines] == ["ok", "ok", "failed", "ok", "ok"]
    assert lines[2]["input"].endswith("broken.safetensors") and "safetensors" in lines[2]["error"]
    assert lines[0]["frames"] == 5 and lines[0]["width"] == 32 and files


def test_skip_existing_resumes_and_never_counts_temporary_files(tmp_path, cli):
    tree(tmp_path)
    (tmp_path / ".a.mp4.partial-999.mp4").write_bytes(b"left by a crashed run")
    (tmp_path / "b.mp4").write_bytes(b"finished earlier")
    run = cli("decode", tmp_path, "-m", "wan", "--decoder", "preview", "--skip-existing")
    assert run.exit_code == 0, run.output
    assert "1 ok, 1 skipped, 0 failed" in run.stdout
    assert (tmp_path / "b.mp4").read_bytes() == b"finished earlier"
    assert read_video(tmp_path / "a.mp4")[0].shape[0] == 5


def test_shard_option_takes_its_slice(tmp_path, cli):
    tree(tmp_path)
    run = cli("decode", tmp_path, "-r", "-m", "wan", "--decoder", "preview", "--shard", "2/2", "-q")
    assert run.exit_code == 0, run.output
    assert sorted(p.name for p in tmp_path.rglob("*.mp4")) == ["b.mp4", "d.mp4"]


@pytest.mark.parametrize(
    "args,fragment", [(["--shard", "3/2"], "--shard"), (["--out", "x.mp4"], "--out-dir")]
)
def test_batch_usage_errors(tmp_path, cli, args, fragment):
    tree(tmp_path)
    run = cli("decode", tmp_path, "-m", "wan", "--decoder", "preview", *args)
    assert run.exit_code == 2 and fragment in run.stderr


def test_two_processes_on_one_tree_never_clobber(tmp_path):
    import subprocess
    import sys

    tree(tmp_path)
    exe = Path(sys.executable).parent / "latent2mp4"
    cmd = [
        str(exe),
        "decode",
        str(tmp_path),
        "-r",
        "-m",
        "wan",
        "--decoder",
        "preview",
        "--skip-existing",
        "-q",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)
    ]
    codes = [p.wait() for p in procs]
    # Either process may lose a race for a file (reported, exit 1); no output is ever half-written.
    assert set(codes) <= {0, 1}
    for mp4 in ("a.mp4", "b.mp4", "sub/c.mp4", "sub/d.mp4"):
        assert read_video(tmp_path / mp4)[0].shape[0] == 5
    assert not list(tmp_path.rglob(".*partial*"))


def test_two_inputs_never_share_an_output(tmp_path, cli):
    """Globbed files mirror their common folder; what still collides is refused, naming both."""
    for name in ("runs/a/latents.safetensors", "runs/b/latents.safetensors", "dup.safetensors"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        save_file({"latents": latents((16, 2, 3, 4))}, str(tmp_path / name))
    np.save(tmp_path / "dup.npy", latents((16, 2, 3, 4)).numpy())
    base = ["-m", "wan", "--decoder", "preview", "-q"]
    run = cli("decode", str(tmp_path / "runs/*/latents.safetensors"), *base,
              "--out-dir", tmp_path / "v", "--skip-existing")  # fmt: skip
    assert run.exit_code == 0, run.output
    assert sorted(str(p.relative_to(tmp_path / "v")) for p in (tmp_path / "v").rglob("*.mp4")) == [
        "a/latents.mp4",
        "b/latents.mp4",
    ]
    for inputs in ([tmp_path / "dup.npy", tmp_path / "dup.safetensors"],
                   [tmp_path / "runs/a", tmp_path / "runs/b"]):  # fmt: skip
        out = tmp_path / f"w-{inputs[0].name}"
        run = cli("decode", *inputs, *base, "--out-dir", out, "--overwrite")
        assert run.exit_code == 1, run.output
        assert f"is also {inputs[0]}" in run.stderr.replace("\n", "")
        assert len(list(out.rglob("*.mp4"))) == 1


def test_empty_shard_and_report_checked_before_work(tmp_path, cli):
    tree(tmp_path)
    run = cli("decode", tmp_path, "-m", "wan", "--decoder", "preview", "--shard", "4/4")
    assert run.exit_code == 0 and "shard 4/4 of 2 file(s) is empty" in run.stderr, run.output
    (tmp_path / "r").mkdir()
    run = cli("decode", tmp_path, "-m", "wan", "--decoder", "preview", "--report", tmp_path / "r")
    assert run.exit_code == 2 and "is a directory" in run.stderr
    assert not list(tmp_path.glob("*.mp4"))
    report = tmp_path / "logs" / "deep" / "r.jsonl"
    run = cli("decode", tmp_path, "-m", "wan", "--decoder", "preview", "--report", report)
    assert run.exit_code == 0 and len(report.read_text().splitlines()) == 2


def test_hidden_folders_are_skipped_like_hidden_files(tmp_path):
    tree(tmp_path)
    (tmp_path / ".cache").mkdir()
    save_file({"latents": latents((16, 2, 3, 4))}, str(tmp_path / ".cache" / "x.safetensors"))
    assert not any(".cache" in str(i.path) for i in collect_inputs([tmp_path], recursive=True))
