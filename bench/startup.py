"""A one-image `forensic scan` from start to exit (issue 15, goal 1: under 2 s, bundle load
included): its wall time in fresh processes, the import time of forensic's scan modules, and
whether PyTorch is imported at all.

    .venv/bin/python bench/startup.py [IMAGE] [--repeats 3] [--tree DIR ...]

IMAGE: default scikit-image's astronaut at 1280x1280, saved as a JPEG (BENCHMARKS.md's photo).
Each run is `python -m forensic scan IMAGE --json R --quiet --bundle exports/default` in a fresh
process with this interpreter. --tree DIR (repeatable) also times the code in DIR, e.g. a
`git worktree add DIR COMMIT` of an older commit, run from DIR so that its `forensic` is the one
imported; the trees take turns run by run, so each sees the same load. Prints each run, best and
median per tree; then per tree `python -X importtime -c "import forensic.cli, forensic.scan"`
(best of --repeats): the modules' cumulative import time, PyTorch's share and onnxruntime's, and
whether a scan of IMAGE imported torch (from that scan's own -X importtime log); last, each
tree's verdict, score and faces.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "exports" / "default"


def scan_command(image: Path, report: Path, importtime: bool = False) -> list[str]:
    flags = ["-X", "importtime"] if importtime else []
    return [sys.executable, *flags, "-m", "forensic", "scan", str(image), "--json", str(report), "--quiet",
            "--bundle", str(BUNDLE)]


def imports(log: str) -> dict[str, tuple[int, float]]:
    """Each module of a -X importtime log: (depth, seconds of cumulative import time)."""
    modules = {}
    for line in log.splitlines():
        if line.startswith("import time:") and line.count("|") == 2 and "imported package" not in line:
            _, cumulative, name = line.split("|")
            modules[name.strip()] = ((len(name) - len(name.lstrip()) - 1) // 2, int(cumulative) / 1e6)
    return modules


def run(command: list[str], tree: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tree", type=Path, action="append", default=[], help="also time the forensic in this folder")
    args = parser.parse_args()
    trees = [ROOT, *(tree.resolve() for tree in args.tree)]
    with tempfile.TemporaryDirectory() as scratch:
        image = args.image or Path(scratch) / "one.jpg"
        if not args.image:
            Image.fromarray(cv2.resize(data.astronaut(), (1280, 1280), interpolation=cv2.INTER_CUBIC)).save(image, quality=92)
        reports = {tree: Path(scratch) / f"r{i}.json" for i, tree in enumerate(trees)}
        walls: dict[Path, list[float]] = {tree: [] for tree in trees}
        for repeat in range(args.repeats):
            for tree in trees:
                started = time.perf_counter()
                run(scan_command(image, reports[tree]), tree)
                walls[tree].append(time.perf_counter() - started)
                print(f"run {repeat + 1}, {tree}: {walls[tree][-1]:.2f} s", flush=True)
        print(f"\nforensic scan {image.name} --json R --quiet (a fresh process, bundle load included)")
        print("| tree | runs (s) | best | median | import forensic.cli, forensic.scan | of which torch | onnxruntime | a scan imports torch |")
        print("|---|---|---|---|---|---|---|---|")
        for tree in trees:
            totals = []
            for _ in range(args.repeats):
                modules = imports(run([sys.executable, "-X", "importtime", "-c", "import forensic.cli, forensic.scan"], tree).stderr)
                total = sum(s for name, (depth, s) in modules.items() if depth == 0 and name.split(".")[0] == "forensic")
                totals.append((total, modules.get("torch", (0, 0.0))[1], modules.get("onnxruntime", (0, 0.0))[1]))
            total, torch_s, ort_s = min(totals)
            torch_imported = "torch" in imports(run(scan_command(image, reports[tree], importtime=True), tree).stderr)
            runs = ", ".join(f"{s:.2f}" for s in walls[tree])
            print(f"| {tree} | {runs} | {min(walls[tree]):.2f} | {statistics.median(walls[tree]):.2f} | "
                  f"{total:.2f} s | {torch_s:.2f} s | {ort_s:.2f} s | {'yes' if torch_imported else 'no'} |")
        for tree in trees:
            [result] = json.loads(reports[tree].read_text())["files"]
            faces = [(face["box"], face["detection_probability"], round(face["score"], 6))
                     for frame in result["frames"] for face in frame["faces"]]
            print(f"{tree}: {result['verdict']} {result['score']:.6f}; faces (box, probability, score): {faces}")


if __name__ == "__main__":
    main()
