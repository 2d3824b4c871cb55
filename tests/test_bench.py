"""Smoke test of scripts/bench.py on tiny configs: real processes and real files, no timing asserted
(speed and memory are measured by the script itself, never by a unit test)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


def test_bench_quick_wan_fp32_matches_diffusers(tmp_path: Path) -> None:
    argv = [sys.executable, str(BENCH), "--quick", "--families", "wan", "--dtypes", "fp32"]
    argv += ["--repeats", "1", "--workdir", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "results.md").read_text().splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line[:1] == "|"]
    head, data = rows[0], rows[2:]
    assert [r[:2] for r in data] == [["wan", "fp32"]]
    psnr = data[0][head.index("PSNR vs diffusers dB")]
    assert psnr.startswith("∞") or float(psnr) >= 60, psnr
    assert (tmp_path / "results.json").is_file()


def test_bench_quick_sound_matches_diffusers(tmp_path: Path) -> None:
    argv = [sys.executable, str(BENCH), "--mode", "sound", "--quick", "--sounds", "cosmos3"]
    argv += ["--seconds", "1", "--repeats", "1", "--workdir", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "sound.md").read_text().splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line[:1] == "|"]
    head, data = rows[0], rows[2:]
    assert [r[0] for r in data] == ["cosmos3"]
    assert data[0][head.index("samples × channels")] == "12000×2"
    assert float(data[0][head.index("waveform max abs")]) <= 3e-4
