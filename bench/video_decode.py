"""Reaching 32 sampled frames of a long video: seeking to keyframes against decoding every frame.

    .venv/bin/python bench/video_decode.py [--seconds 600] [--frames 32] [--scan]

Makes a 20-s 1280x720 H.264 clip at 25 fps with a keyframe every 250 frames (libx264's
default) and loops it to --seconds by copying its packets with shifted timestamps (no
re-encoding), then times `sample_video_frames` both ways (one run each, same process) and prints
frames decoded, seeks, seconds and the ratio; the sampled frames are checked to be identical.
With --scan it also times a whole `forensic scan VIDEO --frames N` in a fresh process (start-up,
bundle load, decode, detection, models and report: exports/default) against the seek floor.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from skimage import data

from forensic.media import sample_video_frames


def make_video(path: Path, seconds: int) -> None:
    base = np.asarray(data.astronaut())
    canvas = np.zeros((720, 1280, 3), np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        for i in range(seconds * 25):
            x = 100 + int(300 * (1 + np.sin(i / 40)))
            canvas[:] = 40
            canvas[100:612, x:x + 512] = base
            for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def loop_video(clip: Path, path: Path, seconds: int) -> None:
    """`clip` repeated to `seconds`, packets copied with their timestamps shifted (a remux)."""
    with av.open(str(clip)) as source:
        template = source.streams.video[0]
        packets = [p for p in source.demux(template) if p.size > 0]
        span = max(p.pts for p in packets) - min(p.pts for p in packets) + packets[0].duration
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream_from_template(template)
            copies = math.ceil(seconds * template.average_rate / template.frames)
            for copy in range(copies):
                for packet in packets:
                    packet.pts += span if copy else 0
                    packet.dts += span if copy else 0
                    packet.stream = stream
                    container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--scan", action="store_true", help="also time a whole forensic scan of the video")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        clip, video = Path(folder) / "clip.mp4", Path(folder) / "long.mp4"
        started = time.perf_counter()
        make_video(clip, 20)
        loop_video(clip, video, args.seconds)
        print(f"made a {args.seconds}-s 720p video ({video.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
        timings, frames = {}, {}
        for seek in (True, False):
            stats = {}
            started = time.perf_counter()
            frames[seek] = list(sample_video_frames(video, count=args.frames, seek=seek, stats=stats))
            timings[seek] = time.perf_counter() - started
            print(f"{stats['method']:>10}: {timings[seek]:6.2f} s, {stats['decoded']} frames decoded, {stats['seeks']} seeks")
        same = all(a.index == b.index and np.array_equal(a.image, b.image) for a, b in zip(frames[True], frames[False]))
        print(f"seeking is {timings[False] / timings[True]:.1f}x faster; same {len(frames[True])} frames: {same}")
        if args.scan:
            report = Path(folder) / "report.json"
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "forensic", "scan", str(video), "--frames", str(args.frames),
                            "--json", str(report), "--quiet"], check=True)
            wall = time.perf_counter() - started
            verdict = json.loads(report.read_text())["files"][0]["verdict"]
            print(f"forensic scan: {wall:.2f} s wall (verdict {verdict}), {wall / timings[True]:.2f}x the seek floor, "
                  f"{wall / timings[False]:.2f}x decoding every frame")


if __name__ == "__main__":
    main()
