"""Throughput of `decode --ray local` (N workers) against the local batch on the same files.

    python scripts/bench_ray.py                          # 20 files, 2 workers of 1 CPU, preview
    python scripts/bench_ray.py --workers 1,2,4 --cpus 1 --files 40
    python scripts/bench_ray.py --decoder vae --vae DIR -m wan   # a real VAE (a GPU machine:
                                                                 # one worker per GPU)

Every run is its own `latent2mp4 decode` process, timed by this script, on seeded Wan latents
(`--latent T,h,w`, default 9×30×52: 33 frames at 240×416). Each mode decodes 1 file and then all
`--files`: the difference, over files − 1, is the steady time per file with start-up (imports,
Ray's start, the workers' start and VAE load) taken out. Reported per mode:
- wall 1 / wall N: seconds for one file and for all files, start-up included;
- files/s: steady throughput, (N − 1) / (wall N − wall 1);
- decode s/file: the mean `seconds` of the --report rows (the decode itself, inside a worker);
- overhead s/file: steady seconds per file × workers − decode s/file: what dispatching a file to
  a worker and returning its outcome costs on top of the decode (local: the batch loop's own).
Ray's instance is private to each run and bound to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from latent2mp4.cli import main; sys.argv[0] = 'latent2mp4'; main()"


def make_files(folder: Path, n: int, shape: tuple[int, int, int]) -> None:
    import latent2mp4

    folder.mkdir(parents=True, exist_ok=True)
    t, h, w = shape
    for i in range(n):
        z = torch.randn((1, 16, t, h, w), generator=torch.Generator().manual_seed(i))
        latent2mp4.save_latents(folder / f"f{i:03d}.safetensors", z, model="wan", fps=16)


def run(inputs: list[Path], out: Path, extra: list[str], env: dict[str, str]) -> tuple[float, list]:
    report = out.with_suffix(".jsonl")
    argv = [sys.executable, "-c", CLI, "decode", *map(str, inputs), "--out-dir", str(out),
            "--overwrite", "--quiet", "--report", str(report), *extra]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"decode failed: {proc.stderr.strip()[-800:]}")
    rows = [json.loads(x) for x in report.read_text().splitlines()]
    report.unlink()
    return wall, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--workers", default="2", help="comma-separated worker counts for --ray local")
    ap.add_argument("--cpus", type=int, default=1, help="--ray-cpus per worker")
    ap.add_argument("--latent", default="9,30,52", help="T,h,w of each file's Wan latents")
    ap.add_argument("--decoder", default="preview")
    ap.add_argument("--vae")
    ap.add_argument("-m", "--model", default="wan")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="l2m-bench-ray-"))
    src = work / "in"
    shape = tuple(int(v) for v in args.latent.split(","))
    make_files(src, args.files, shape)  # type: ignore[arg-type]
    files = sorted(src.glob("*.safetensors"))
    common = [
        "-m",
        args.model,
        "--decoder",
        args.decoder,
        *(["--vae", args.vae] if args.vae else []),
    ]
    (work / "home").mkdir(exist_ok=True)  # Ray's token for its local instance goes there
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
           "HOME": str(work / "home")}  # fmt: skip
    modes = [("local batch", 1, [])] + [
        (
            f"--ray local, {n} workers",
            n,
            ["--ray", "local", "--ray-workers", str(n), "--ray-cpus", str(args.cpus)],
        )  # fmt: skip
        for n in (int(v) for v in args.workers.split(","))
    ]
    print(f"{args.files} files of Wan latents 16x{'x'.join(map(str, shape))}, --decoder "
          f"{args.decoder}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}")  # fmt: skip
    print("| mode | wall 1 file s | wall N files s | files/s | decode s/file | overhead s/file |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, workers, extra in modes:
        w1, _ = run(files[:1], work / "out1", common + extra, env)
        wn, rows = run(files, work / "outn", common + extra, env)
        steady = (wn - w1) / (len(files) - 1)
        decode = statistics.mean(r["seconds"] for r in rows)
        print(f"| {name} | {w1:.1f} | {wn:.1f} | {1 / steady:.2f} | {decode:.3f} | "
              f"{steady * workers - decode:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
