"""decode --ray on a real Ray cluster started on 127.0.0.1 (one head, two worker processes):
balance, a corrupt file, a worker killed mid-file, resuming, S3 with Ray, and Ctrl-C."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import latent2mp4

from conftest import free_port, latents

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
CLI = "import sys; from latent2mp4.cli import main; sys.argv[0] = 'latent2mp4'; main()"


def _ours(pid: int, marker: str) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Cluster:
    """`ray start --head` bound to 127.0.0.1 with 2 CPUs: two 1-CPU decode workers."""

    def __init__(self, env: dict[str, str]) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="l2m-ray-"))  # short: Ray's socket paths
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {
            **env,
            "HOME": str(self.temp / "home"),  # no token from (or into) the user's ~/.ray
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # else Ray 2.60 binds the interface address
            "PYTHONPATH": str(ROOT),
        }
        (self.temp / "home").mkdir()

    def start(self) -> None:
        subprocess.run(
            [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
             "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={self.temp}"],
            env=self.env, check=True, capture_output=True, timeout=180,
        )  # fmt: skip

    def stop(self) -> None:
        """Only this cluster's processes — those whose command line names its temp folder, and
        their children (agents, workers) — by process id: never `ray stop`, which ends every
        Ray process of the machine."""
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        mine = {pid for pid in pids if _ours(pid, str(self.temp))}
        mine |= {pid for pid in pids if _parent(pid) in mine}
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
            for pid in mine:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(_alive(pid) for pid in mine):
                time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)

    def decode(self, *args, wait: bool = True, **kw):
        argv = [sys.executable, "-c", CLI, "decode", *map(str, args), "--ray", self.address]
        proc = subprocess.Popen(
            argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
        )
        if not wait:
            return proc
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err


@pytest.fixture(scope="module")
def cluster(s3_server):
    pytest.importorskip("ray")
    c = Cluster({**os.environ, **s3_server.env})
    c.start()
    yield c
    c.stop()


def mixed_files(folder: Path) -> list[Path]:
    """Short and long clips (1 to 28 latent frames) and a corrupt file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, t in enumerate([28, 1, 3, 2, 14, 1]):
        p = folder / f"clip{i}.safetensors"
        latent2mp4.save_latents(p, latents((1, 16, t, 24, 24), seed=i), model="wan", fps=16)
        paths.append(p)
    (folder / "corrupt.safetensors").write_bytes(b"\x00not safetensors")
    return paths


def report_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cluster_batch_with_a_killed_worker_equals_the_local_batch(tmp_path, cluster, cli):
    src = tmp_path / "in"
    clips = mixed_files(src)
    args = ("--decoder", "preview", "--lossless")
    # The local batch, for comparison, with a worker's torch threads (--ray-cpus 1): float
    # sums split over other thread counts may round differently (1 LSB in a few pixels).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = cli("decode", src, *args, "--out-dir", tmp_path / "local")
    finally:
        torch.set_num_threads(threads)
    assert local.exit_code == 1 and "6 ok, 0 skipped, 1 failed" in local.stdout
    # The cluster: the long clip's worker is killed while it writes.
    out, report = tmp_path / "ray", tmp_path / "ray.jsonl"
    proc = cluster.decode(src, *args, "--out-dir", out, "--report", report,
                          "--ray-workers", "2", "--ray-cpus", "1", wait=False)  # fmt: skip
    deadline, victim = time.monotonic() + 240, None
    while victim is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        for partial in out.glob(".clip0.mp4.partial-*"):
            pid = int(partial.name.split("partial-")[1].split(".")[0])
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
                victim = pid
        time.sleep(0.02)
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stdout + stderr  # the corrupt file, as locally
    assert "Traceback" not in stdout + stderr
    assert "6 ok, 0 skipped, 1 failed" in stdout
    assert stderr.count("its worker was lost") == 1 and "clip0.safetensors" in stderr
    rows = report_rows(report)
    assert sorted(r["input"] for r in rows) == sorted(
        map(str, [*clips, src / "corrupt.safetensors"])
    )
    assert {r["input"]: r["status"] for r in rows}[str(src / "corrupt.safetensors")] == "failed"
    # Nothing lost, nothing duplicated, no partial left behind, and the bytes of the local run.
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "local").iterdir())
    assert names == [f"clip{i}.mp4" for i in range(6)]
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    # Resuming: every finished file is skipped; only the corrupt one fails again.
    code, stdout, _ = cluster.decode(src, *args, "--out-dir", out, "--skip-existing",
                                     "--ray-workers", "2", "--ray-cpus", "1")  # fmt: skip
    assert code == 1 and "0 ok, 6 skipped, 1 failed" in stdout


def test_s3_inputs_outputs_and_report_with_ray(tmp_path, cluster, s3):
    s3.client().create_bucket(Bucket="rayb")
    for i, t in enumerate([3, 1, 2]):
        p = tmp_path / f"r{i}.safetensors"
        latent2mp4.save_latents(p, latents((1, 16, t, 8, 8), seed=i), model="wan", fps=16)
        s3.client().upload_file(str(p), "rayb", f"in/deep/r{i}.safetensors")
    code, stdout, stderr = cluster.decode(
        "s3://rayb/in/", "-r", "--decoder", "preview", "--out-dir", "s3://rayb/out/",
        "--report", "s3://rayb/report.jsonl", "--ray-workers", "2", "--ray-cpus", "1",
    )  # fmt: skip
    assert code == 0, stdout + stderr
    assert [k for k in s3.keys("rayb") if k.startswith("out/")] == [
        f"out/deep/r{i}.mp4" for i in range(3)
    ]
    body = s3.client().get_object(Bucket="rayb", Key="report.jsonl")["Body"].read().decode()
    assert sorted(json.loads(x)["outputs"][0] for x in body.splitlines()) == [
        f"s3://rayb/out/deep/r{i}.mp4" for i in range(3)
    ]


def test_sigterm_stops_the_workers_and_removes_their_partials(tmp_path, cluster):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        latent2mp4.save_latents(src / f"long{i}.safetensors",
                                latents((1, 16, 40, 24, 24), seed=i), model="wan")  # fmt: skip
    out = tmp_path / "out"
    proc = cluster.decode(src, "--decoder", "preview", "--out-dir", out,
                          "--ray-workers", "2", "--ray-cpus", "1", wait=False)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(out.glob(".long*.partial-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    workers = {int(p.name.split("partial-")[1].split(".")[0]) for p in out.glob(".*partial-*")}
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout + stderr
    assert stderr.strip().splitlines()[-1] == "terminated"
    assert list(out.iterdir()) == []  # no partial, no half-written output
    time.sleep(1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # the workers are gone
