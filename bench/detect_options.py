"""The ways to make face detection cheaper, measured against full MTCNN on the same frames:
where a face's box is taken from the previous analysed frame, how close each way comes to the
box full detection finds, and at what cost; and MTCNN's networks in ONNX Runtime.

    .venv/bin/python bench/detect_options.py [VIDEO ...] [--frames 32] [--threads 1]

For each video (default: bench/video_decode.py's 720p clip, 14 s), 32 frames are sampled and
detected in full; then for each frame after the first, from the previous frame's most probable
box: (reuse) the box itself; (O-Net) MTCNN's last network alone on it (FaceDetector.refine,
what `--detect-every` uses); (local) all of MTCNN on a 2.5x region around it, resized to 128 px;
and (chained) O-Net followed from the first frame's box through the whole clip with no
detection at all; and O-Net re-run on each frame's own full-detection box, which shows how far
O-Net alone lands from the cascade's box with no motion at all. Prints the IoU with full detection's box (the face it overlaps most) and the
milliseconds per frame; then P-Net, R-Net and O-Net timed in PyTorch (facenet-pytorch's modules)
and in ONNX Runtime (forensic/weights/, what a scan runs).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

from forensic.faces import FaceDetector, crop_face, crop_square
from forensic.media import sample_video_frames
from forensic.mtcnn import _integral, _pyramid_level, network_input
from forensic.tracking import iou
from video_decode import make_video  # bench/ is the script's folder, so on sys.path


def local_mtcnn(detector: FaceDetector, image: np.ndarray, box, size: int = 128, context: float = 2.5):
    """All of MTCNN on a square `context` times the box, resized to `size`: the face nearest its centre."""
    left, top, side = crop_square(box, context)
    scale = size / side
    mtcnn, saved = detector._mtcnn, detector._mtcnn.min_face_size
    mtcnn.min_face_size = size / context / 2
    try:
        boxes, _ = mtcnn._detect_face(crop_face(image, box, context, size)[None])
    finally:
        mtcnn.min_face_size = saved
    if len(boxes[0]) == 0:
        return None
    x1, y1, x2, y2, _ = min(boxes[0], key=lambda b: (b[0] + b[2] - size) ** 2 + (b[1] + b[3] - size) ** 2)
    return x1 / scale + left, y1 / scale + top, x2 / scale + left, y2 / scale + top


def timed(work, seconds: list[float]):
    started = time.perf_counter()
    result = work()
    seconds.append(time.perf_counter() - started)
    return result


def _nearest(box, faces) -> float:
    """IoU of `box` with the detected face it overlaps most (0 when there is no box)."""
    return max(iou(box, face.box) for face in faces) if box is not None else 0.0


def compare_followers(detector: FaceDetector, videos: list[Path], count: int) -> None:
    ious: dict[str, list[float]] = {"reuse": [], "O-Net": [], "local": [], "chained O-Net": [],
                                    "O-Net on the frame's own box": []}
    cost: dict[str, list[float]] = {"full": [], "O-Net": [], "local": []}
    for video in videos:
        frames = [frame.image for frame in sample_video_frames(video, count)]
        full = timed(lambda: detector.detect(frames), cost["full"])
        cost["full"][-1] /= len(frames)
        chained = full[0][0].box if full[0] else None
        for image, faces in zip(frames, full):  # O-Net re-run on full detection's own box: its own spread
            if faces:
                ious["O-Net on the frame's own box"].append(_nearest(detector.refine(image, [faces[0].box])[0].box, faces))
        for previous, faces, image in zip(full, full[1:], frames[1:]):
            if chained is not None:
                chained = detector.refine(image, [chained])[0].box
                if faces:
                    ious["chained O-Net"].append(max(iou(chained, face.box) for face in faces))
            if not previous or not faces:
                continue
            box = previous[0].box
            ious["reuse"].append(_nearest(box, faces))
            ious["O-Net"].append(_nearest(timed(lambda: detector.refine(image, [box])[0].box, cost["O-Net"]), faces))
            ious["local"].append(_nearest(timed(lambda: local_mtcnn(detector, image, box), cost["local"]), faces))
    print(f"{len(videos)} videos, {count} frames each; IoU with full detection's box, and ms per frame")
    print("| box from | median IoU | 10th percentile | lowest | ms per frame |")
    print("|---|---|---|---|---|")
    for name, values in ious.items():
        ms = f"{np.mean(cost[name]) * 1000:.1f}" if name in cost else {"reuse": "0"}.get(name, "as O-Net")
        print(f"| {name} | {np.median(values):.3f} | {np.percentile(values, 10):.3f} | {min(values):.3f} | {ms} |")
    print(f"| full detection (batches of {count}) | 1 | 1 | 1 | {np.mean(cost['full']) * 1000:.1f} |")


def compare_runtimes(detector: FaceDetector, video: Path, threads: int) -> None:
    """P-Net on one batch's image pyramid, R-Net and O-Net on as many crops as full detection
    gives them, in PyTorch and in ONNX Runtime (one thread each), best of 3."""
    frames = [frame.image for frame in sample_video_frames(video, 16)]
    scale = detector._scale_for(frames[0])
    table = _integral(np.stack([detector._downscale(f, scale) for f in frames]))
    height, width = table.shape[1] - 1, table.shape[2] - 1
    smallest = max(12, int(detector.min_face_size * scale))
    scales, level = [], 12 / smallest
    while min(height, width) * level >= 12:
        scales.append(level)
        level *= 0.709
    levels = [_pyramid_level(table, (int(height * s + 1), int(width * s + 1))) for s in scales]
    pyramid = [np.ascontiguousarray(network_input(level).transpose(0, 3, 1, 2)) for level in levels]
    rng = np.random.default_rng(0)
    inputs = {"P-Net": pyramid, "R-Net": [rng.standard_normal((1400, 3, 24, 24), np.float32)],
              "O-Net": [rng.standard_normal((200, 3, 48, 48), np.float32)]}
    onnx = detector._mtcnn
    print(f"\nMTCNN's networks on 16 frames of {video.name} ({width}x{height} searched, {len(scales)} pyramid levels)")
    print("| network | input | PyTorch ms | ONNX Runtime ms | x |")
    print("|---|---|---|---|---|")
    for (name, batches), net, session in zip(inputs.items(), (PNet(), RNet(), ONet()), (onnx.pnet, onnx.rnet, onnx.onet)):
        net.eval()
        layout = torch.channels_last if name == "P-Net" else torch.contiguous_format  # as facenet feeds them
        tensors = [torch.from_numpy(x).contiguous(memory_format=layout) for x in batches]
        torch_s = min(timed_runs(lambda: [net(x) for x in tensors]))
        ort_s = min(timed_runs(lambda: [session(x) for x in batches]))
        shape = "pyramid" if name == "P-Net" else f"{len(batches[0])} crops"
        print(f"| {name} | {shape} | {torch_s * 1000:.0f} | {ort_s * 1000:.0f} | {torch_s / ort_s:.2f} |")


def timed_runs(work, repeats: int = 3) -> list[float]:
    seconds: list[float] = []
    with torch.inference_mode():
        for _ in range(repeats):
            timed(work, seconds)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", type=Path)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch and ONNX Runtime threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = FaceDetector(threads=args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        videos = args.videos
        if not videos:
            videos = [Path(scratch) / "clip720.mp4"]
            make_video(videos[0], 14)
        compare_followers(detector, videos, args.frames)
        compare_runtimes(detector, videos[0], args.threads)


if __name__ == "__main__":
    main()
