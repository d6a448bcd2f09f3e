"""The PGD self-test's cost against the scan's own, on a 32-frame video this script makes itself.

    .venv/bin/python bench/self_test.py [--bundle exports/default] [--frames 32]

Prints, from one run: the scan's wall time without and with `--self-test` (bisection over the
schedule, early stop at the flipping step, deciding identities only), the same self-test done
the way it was before (every ε of the schedule, every step, every kept crop: the full sweep),
the ratios, and whether both found the same fragility.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from skimage import data

from forensic.bundle import load_bundle
from forensic.scan import Scanner
from forensic.selftest import DEFAULT_EPSILONS, SelfTestSettings, attack
from trainer.data.synthetic import panning_frames, write_video


class CapturingScanner(Scanner):
    """Keeps the file's analysed crops as the self-test sees them (the scan drops them after)."""

    def _self_test(self, result, check=None):
        self.captured = dict(result.crops)
        return super()._self_test(result, check)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("exports/default"))
    parser.add_argument("--frames", type=int, default=32)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    with tempfile.TemporaryDirectory() as folder:
        video = Path(folder) / "pan.mp4"
        write_video(video, panning_frames(data.astronaut(), count=args.frames * 2))
        plain = Scanner(bundle, device="cpu", frames=args.frames, keep_crops=True)
        plain.scan_file(video)  # warm-up: first-call allocations
        started = time.perf_counter()
        result = plain.scan_file(video)
        scan_s = time.perf_counter() - started
        settings = SelfTestSettings()
        tested = CapturingScanner(bundle, device="cpu", frames=args.frames, self_test=settings)
        with_test = tested.scan_file(video)
        self_test_s = with_test.timings["self_test"]  # the self-test stage alone, as the report times it
        report = with_test.self_test

        # The full sweep: every ε, every step, on every analysed crop, as the self-test did before.
        keys = sorted(tested.captured)
        pixels = plain.runner.to_pixels(np.stack([tested.captured[key][0] for key in keys]))
        fake_side = with_test.score >= plain.threshold
        labels = np.full(len(keys), int(fake_side), dtype=np.int64)
        started = time.perf_counter()
        swept = None
        for epsilon in DEFAULT_EPSILONS:
            adversarial, _ = attack(plain.runner, tested.gradient_oracle, pixels, labels, epsilon, settings)
            score = tested._file_score(with_test, dict(zip(keys, plain.runner.predict_pixels(adversarial).ensemble.tolist())))
            if (score >= plain.threshold) != fake_side and swept is None:
                swept = epsilon
        sweep_s = time.perf_counter() - started
    steps = sum(trial["steps"] for trial in report["trials"])
    print(f"bundle {bundle.name}; {result.frames_analyzed} frames analysed, {report['faces_attacked']} crops attacked")
    print(f"scan without self-test      {scan_s:7.2f} s")
    print(f"self-test (bisection, stop) {self_test_s:7.2f} s  = {self_test_s / scan_s:5.1f}x the scan; "
          f"{len(report['trials'])} trials, {steps} PGD steps; fragility {report['fragility']}")
    print(f"full sweep (before)         {sweep_s:7.2f} s  = {sweep_s / scan_s:5.1f}x the scan; "
          f"{len(DEFAULT_EPSILONS)} trials, {len(DEFAULT_EPSILONS) * settings.steps} PGD steps on {len(keys)} crops; "
          f"fragility {swept}")
    print(f"same fragility: {report['fragility'] == swept}; speed-up over the sweep {sweep_s / max(self_test_s, 1e-9):.1f}x")


if __name__ == "__main__":
    main()
