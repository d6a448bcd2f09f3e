"""Throughput of forensic's stages on this machine, from one run (the machine is noisy, so
ratios between figures taken in the same run matter more than the absolute numbers).

    .venv/bin/python bench/scan_throughput.py [--bundle exports/default] [--repeats 3] [--vs OTHER_BUNDLE]

--vs also times a second bundle's model stage and whole video scan, interleaved with the first's
(A, B, A, B, ...; best of each), and prints B's time over A's: a candidate's cost against the
shipped bundle's from one run, which a busy machine skews less than two runs apart.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from forensic.bundle import DEFAULT_BUNDLE, Bundle, load_bundle
from forensic.faces import FaceDetector
from forensic.inference import EnsembleRunner
from forensic.media import sample_video_frames
from forensic.scan import Scanner
from trainer.data.synthetic import astronaut, panning_frames, write_video


def best_of(repeats: int, work) -> float:
    """Best wall time of `repeats` runs (the least disturbed by other load)."""
    return interleaved(repeats, {"work": work})["work"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vs", type=Path, metavar="OTHER_BUNDLE",
                        help="also time this bundle, interleaved with --bundle, and print the ratios")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    image, _ = astronaut()
    frames = panning_frames(image, count=64)  # 448x336 frames with one face

    detector = FaceDetector()
    one = best_of(args.repeats, lambda: [detector.detect([f]) for f in frames[:16]]) / 16
    batched = best_of(args.repeats, lambda: detector.detect(frames[:16])) / 16
    print(f"MTCNN on 448x336 frames: {one * 1000:.1f} ms/frame one at a time, "
          f"{batched * 1000:.1f} ms/frame in batches of 16 (x{one / batched:.2f})")

    # A 12 MP phone photo: a --min-face 40 face must keep MTCNN's 12 px, so it is searched at
    # 1210 px wide; --min-face 68 gives the 720 px the detector used whatever --min-face said.
    photo = np.full((3024, 4032, 3), 110, np.uint8)
    photo[1500:1820, 2000:2320] = panning_frames(image, count=1)[0][:320, :320]
    wide = {min_face: best_of(args.repeats, lambda: FaceDetector(min_face_size=min_face).detect([photo]))
            for min_face in (40, 68)}
    print(f"MTCNN on a 4032x3024 photo: {wide[40] * 1000:.0f} ms at --min-face 40 (searched at 1210 px), "
          f"{wide[68] * 1000:.0f} ms at --min-face 68 (720 px) (x{wide[40] / wide[68]:.2f})")
    loading = best_of(args.repeats, lambda: load_bundle(args.bundle))
    print(f"load_bundle (SHA-256 of every model file, external-data check): {loading * 1000:.0f} ms")

    runner = EnsembleRunner(bundle, device="auto")
    size = bundle.input_size
    crops = np.random.default_rng(0).integers(0, 256, (64, size, size, 3), dtype=np.uint8)
    for batch in (1, 32):
        runner.batch_size = batch
        seconds = best_of(args.repeats, lambda: runner.predict(crops))
        print(f"{bundle.name} in ONNX Runtime ({'+'.join(runner.providers)}), {size}px, batch {batch}: "
              f"{len(crops) / seconds:.1f} crops/s")

    with tempfile.TemporaryDirectory() as scratch:
        video = Path(scratch) / "pan.mp4"
        write_video(video, frames, fps=25)
        decode = best_of(args.repeats, lambda: list(sample_video_frames(video, 32)))
        scanner = Scanner(bundle, device="auto", frames=32, detector=detector)
        scan = best_of(args.repeats, lambda: scanner.scan_file(video))
        print(f"decode 32 of 64 frames (H.264 448x336): {decode * 1000:.0f} ms")
        print(f"scan one 64-frame video, 32 frames analysed: {scan:.2f} s "
              f"(decode {decode / scan:.0%} of it; {32 / scan:.1f} frames/s end to end)")
        if args.vs is not None:
            compare_bundles(bundle, load_bundle(args.vs), video, detector, args.repeats)


def interleaved(repeats: int, works: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Best wall time of each work, run in turn A, B, A, B, ... so that load hits both alike."""
    best = {name: math.inf for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            start = time.perf_counter()
            work()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def compare_bundles(first: Bundle, second: Bundle, video: Path, detector: FaceDetector, repeats: int) -> None:
    a, b = (first.name, second.name) if first.name != second.name else ("--bundle", "--vs")
    bundles = {a: first, b: second}
    rng = np.random.default_rng(0)
    runners = {name: EnsembleRunner(bundle, device="auto") for name, bundle in bundles.items()}
    crops = {name: rng.integers(0, 256, (64, bundle.input_size, bundle.input_size, 3), dtype=np.uint8)
             for name, bundle in bundles.items()}  # each at its own input size
    for batch in (1, 32):
        for runner in runners.values():
            runner.batch_size = batch
        best = interleaved(repeats + 2, {name: (lambda r=runner, c=crops[name]: r.predict(c)) for name, runner in runners.items()})
        print(f"model stage, batch {batch}: " + ", ".join(f"{name} {64 / t:.1f} crops/s" for name, t in best.items())
              + f"; {b} takes x{best[b] / best[a]:.2f} the time of {a}")
    scanners = {name: Scanner(bundle, device="auto", frames=32, detector=detector) for name, bundle in bundles.items()}
    best = interleaved(repeats, {name: (lambda s=scanner: s.scan_file(video)) for name, scanner in scanners.items()})
    print("whole scan of the 64-frame video: " + ", ".join(f"{name} {t:.2f} s" for name, t in best.items())
          + f"; x{best[b] / best[a]:.2f}")

if __name__ == "__main__":
    main()
