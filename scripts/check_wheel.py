"""Checks a built wheel holds the package alone: its code and every built-in preset."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(wheel: str) -> int:
    names = zipfile.ZipFile(wheel).namelist()
    stray = [n for n in names if not n.startswith(("latent2mp4/", "latent2mp4-"))]
    presets = {Path(n).name for n in names if n.startswith("latent2mp4/configs/")}
    want = {p.name for p in (ROOT / "latent2mp4" / "configs").glob("*.yaml")}
    problems = []
    if stray:
        problems.append(f"files outside the package: {stray[:5]}")
    if want - presets:
        problems.append(f"presets missing: {sorted(want - presets)}")
    if "latent2mp4/py.typed" not in names:
        problems.append("no py.typed")
    for p in problems:
        print(f"{wheel}: {p}", file=sys.stderr)
    if not problems:
        print(f"{Path(wheel).name}: {len(names)} files, {len(presets)} presets, nothing else")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
