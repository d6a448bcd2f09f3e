"""MTCNN face detection in ONNX Runtime and NumPy: facenet-pytorch's networks and detect_face, ported.

facenet-pytorch's three networks (P-Net, R-Net, O-Net) with its shipped weights are exported once
to ONNX (scripts/export_mtcnn_onnx.py; the files, their versions and the weights' licence are in
forensic/weights/) and run by ONNX Runtime, each file checked as it loads against the SHA-256
that weights/mtcnn.json records (the hashes go into the scan report as its `face_detector`);
the rest of facenet's `detect_face` runs in NumPy:
the image pyramid and the 24/48-pixel crops resampled as torch's `interpolate(mode="area")` does
(adaptive average pooling, reproduced bit for bit from an integral image), the box arithmetic in
float32 as torch does it, and an NMS that reproduces torchvision's. So a scan imports neither
PyTorch nor torchvision (BENCHMARKS.md, issue 15). With facenet's own PyTorch networks passed as
`networks`, `MTCNN.detect` equals facenet-pytorch's `MTCNN(keep_all=True).detect` exactly; with
the ONNX networks, within ONNX Runtime's float rounding (tests/test_mtcnn.py).

Ported from facenet-pytorch 2.5.3 (models/mtcnn.py, models/utils/detect_face.py),
https://github.com/timesler/facenet-pytorch, Copyright (c) 2019 Timothy Esler, MIT License:
Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions: The above copyright notice and this
permission notice shall be included in all copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from forensic.errors import ForensicError

WEIGHTS = Path(__file__).resolve().parent / "weights"
RECORD = "mtcnn.json"  # beside the networks: their source, the exporting versions, each file's SHA-256
NETWORKS = ("pnet", "rnet", "onet")
F32 = np.float32

# A network: float32 pixels (N, 3, H, W), scaled by network_input, to its outputs as arrays
# (P-Net, R-Net: regression, probabilities; O-Net: regression, landmarks, probabilities).
Network = Callable[[np.ndarray], Sequence[np.ndarray]]


def read_networks(weights: Path) -> tuple[dict[str, tuple[Path, bytes]], dict]:
    """Each network's ONNX file in `weights`, read once and checked against the SHA-256 that
    `weights`/mtcnn.json records ({name: (path, contents)}), and the detector's identity as a
    report records it: its name, the weights' source and the SHA-256 of each file read. The
    bytes checked are the bytes ONNX Runtime is given (OnnxNetwork), so the hashes are those of
    the networks that run. A record or file that is missing, unreadable or does not match is a
    ForensicError naming it, in one line (as forensic.bundle refuses a model file)."""
    record_path = Path(weights) / RECORD
    try:
        record = json.loads(record_path.read_text("utf-8"))
        source = f"facenet-pytorch {record['versions']['facenet-pytorch']}"
        entries = {name: (str(record["networks"][name]["file"]), record["networks"][name]["sha256"]) for name in NETWORKS}
    except OSError as exc:
        raise ForensicError(f"{record_path}: cannot read the face detector's record ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError) as exc:  # not UTF-8 or JSON, or another shape
        raise ForensicError(f"{record_path}: not a face detector record ({type(exc).__name__}: {exc})") from None
    files, identities = {}, []
    for name, (file, expected) in entries.items():
        path = record_path.parent / file
        try:
            if not path.is_file():  # never opened: a FIFO would block
                raise ForensicError(f"{path}: the face detector's {name} is "
                                    f"{'not a regular file' if path.exists() else 'missing'}")
            contents = path.read_bytes()
        except OSError as exc:
            raise ForensicError(f"{path}: cannot read the face detector's {name} ({exc.strerror or exc})") from None
        digest = hashlib.sha256(contents).hexdigest()
        if digest != expected:
            raise ForensicError(f"{path}: SHA-256 {digest[:12]}… does not match {RECORD}'s {str(expected)[:12]}…; "
                                f"the face detector's weights were modified or are corrupt")
        files[name] = (path, contents)
        identities.append({"name": name, "file": file, "sha256": digest})
    return files, {"name": "MTCNN", "weights": f"{source}, exported to ONNX", "networks": identities}


def detector_fields(record: dict) -> dict:
    """A face detector record (an `identity`, perhaps with settings beside it) as flat fields to
    compare: each network as `{name} sha256` (a network is its bytes, whatever its file is named)."""
    networks = record.get("networks")
    if not isinstance(networks, list) or not all(isinstance(network, dict) for network in networks):
        return dict(record)
    fields = {key: value for key, value in record.items() if key != "networks"}
    return {**fields, **{f"{network.get('name')} sha256": network.get("sha256") for network in networks}}


class OnnxNetwork:
    """One of MTCNN's networks in ONNX Runtime, from its ONNX file's `contents` (read and checked
    by read_networks); `path` names it in errors."""

    def __init__(self, path: Path, contents: bytes, device: str = "cpu", threads: int = 0):
        from forensic.inference import make_session

        self.session = make_session(str(path), device, threads, spin=False, contents=contents)

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def __call__(self, pixels: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=F32)})


def network_input(pixels: np.ndarray) -> np.ndarray:
    """Pixels in [0, 255] scaled to [-1, 1] (float32), as MTCNN's networks take them."""
    return (np.asarray(pixels, dtype=F32) - F32(127.5)) * F32(0.0078125)


def _integral(images: np.ndarray) -> np.ndarray:
    """Summed-area table (B, H+1, W+1, C) of a (B, H, W, C) batch, exact: for uint8 pixels
    OpenCV's (int32 while the sums fit, else float64), otherwise float64 sums."""
    b, h, w, c = images.shape
    if images.dtype == np.uint8 and c <= 4:
        depth = cv2.CV_32S if h * w * 255 < 2**31 else cv2.CV_64F
        return np.stack([cv2.integral(np.ascontiguousarray(image), sdepth=depth).reshape(h + 1, w + 1, c) for image in images])
    table = np.zeros((b, h + 1, w + 1, c), dtype=np.float64)
    np.cumsum(np.cumsum(images, axis=1, dtype=np.float64), axis=2, out=table[:, 1:, 1:])
    return table


def _bins(start, length, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive average pooling's bins of `size` outputs over `length` inputs from `start` (each
    (K,)): output i averages inputs floor(i*length/size) to ceil((i+1)*length/size), exclusive."""
    i = np.arange(size, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)[:, None]
    begin = (i * length) // size
    end = -((-(i + 1) * length) // size)
    offset = np.asarray(start, dtype=np.int64)[:, None]
    return begin + offset, end + offset


def _average(sums: np.ndarray, y0, y1, x0, x1) -> np.ndarray:
    """torch's adaptive_avg_pool2d's mean: the float32 sum divided by the bin's rows, then by its
    columns (bit for bit torch's, tests/test_mtcnn.py)."""
    rows = (y1 - y0).astype(F32)[..., None]
    columns = (x1 - x0).astype(F32)[..., None]
    return sums.astype(F32) / rows / columns


def _pyramid_level(table: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Every image of the batch area-resampled (torch's interpolate(mode="area")) to `size`
    (h, w): (B, h, w, C) float32, from the summed-area table, rows then columns."""
    height, width = table.shape[1] - 1, table.shape[2] - 1
    y0, y1 = _bins([0], [height], size[0])
    x0, x1 = _bins([0], [width], size[1])
    rows = np.take(table, y1[0], axis=1) - np.take(table, y0[0], axis=1)
    sums = np.take(rows, x1[0], axis=2) - np.take(rows, x0[0], axis=2)
    return _average(sums, y0[0][:, None], y1[0][:, None], x0, x1)


def _regions(table: np.ndarray, image, top, left, height, width, size: int) -> np.ndarray:
    """The regions [top, top+height) x [left, left+width) of images `image` (all (K,) arrays)
    area-resampled to size x size: (K, size, size, C) float32, as torch's interpolate(mode="area")
    on each crop."""
    y0, y1 = _bins(top, height, size)
    x0, x1 = _bins(left, width, size)
    _, rows, columns, channels = table.shape
    flat = table.reshape(-1, channels)
    base = np.asarray(image, dtype=np.int64)[:, None] * rows
    r0, r1 = ((base + y0) * columns)[:, :, None], ((base + y1) * columns)[:, :, None]
    c0, c1 = x0[:, None, :], x1[:, None, :]
    sums = flat.take(r1 + c1, axis=0) - flat.take(r0 + c1, axis=0) - flat.take(r1 + c0, axis=0) + flat.take(r0 + c0, axis=0)
    return _average(sums, y0[:, :, None], y1[:, :, None], c0, c1)


def _nchw(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(network_input(pixels).transpose(0, 3, 1, 2))


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """torchvision.ops.nms on the CPU: boxes by score, highest first (a stable sort), each
    suppressing the later ones whose IoU with it exceeds `threshold`; areas without MTCNN's +1."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        w = np.maximum(F32(0), np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
        h = np.maximum(F32(0), np.minimum(y2[i], y2) - np.maximum(y1[i], y1))
        inter = w * h
        suppressed |= (inter / (areas[i] + areas - inter)).astype(np.float64) > threshold  # C++: float > double
    return np.array(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, threshold: float) -> np.ndarray:
    """torchvision.ops.batched_nms, both of its CPU strategies (which differ in float rounding);
    over 1,000 boxes, equal scores may come in another order than torchvision's (below)."""
    if boxes.size > 4000:  # torchvision: NMS per category, then all kept by score
        keep_mask = np.zeros(len(scores), dtype=bool)
        for class_id in np.unique(idxs):
            current = np.nonzero(idxs == class_id)[0]
            keep_mask[current[nms(boxes[current], scores[current], threshold)]] = True
        keep = np.nonzero(keep_mask)[0]
        # torchvision orders equal scores here by torch's unstable sort, which differs between
        # CPUs (x86-simd-sort with AVX-512, std::sort elsewhere); they stay in index order here
        return keep[np.argsort(-scores[keep], kind="stable")]
    if boxes.size == 0:
        return np.empty((0,), dtype=np.int64)
    offsets = idxs.astype(boxes.dtype) * (boxes.max() + F32(1))
    return nms(boxes + offsets[:, None], scores, threshold)


def _nms_min(boxes, scores, threshold):  # facenet's nms_numpy with the 'Min' overlap, verbatim
    x1, y1, x2, y2 = (boxes[:, k].copy() for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    pick = np.zeros_like(scores, dtype=np.int16)
    counter = 0
    while order.size > 0:
        i = order[-1]
        pick[counter] = i
        counter += 1
        idx = order[0:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[idx]) - np.maximum(x1[i], x1[idx]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[idx]) - np.maximum(y1[i], y1[idx]) + 1)
        overlap = w * h / np.minimum(area[i], area[idx])
        order = order[np.where(overlap <= threshold)]
    return pick[:counter].copy()


def _batched_nms_min(boxes, scores, idxs, threshold):
    if boxes.size == 0:
        return np.empty((0,), dtype=np.int64)
    offsets = idxs.astype(boxes.dtype) * (boxes.max() + F32(1))
    return _nms_min(boxes + offsets[:, None], scores, threshold).astype(np.int64)


def _candidates(reg, probs, scale, threshold):  # facenet's generateBoundingBox
    image, y, x = np.nonzero(probs >= F32(threshold))
    score = probs[image, y, x]
    reg = reg[image, :, y, x]  # (K, 4)
    bb = np.stack([x, y], axis=1).astype(F32)
    q1 = np.floor((2 * bb + F32(1)) / F32(scale))
    q2 = np.floor((2 * bb + F32(12)) / F32(scale))
    return np.concatenate([q1, q2, score[:, None], reg], axis=1), image


def _bbreg(boxes, reg):
    w = boxes[:, 2] - boxes[:, 0] + F32(1)
    h = boxes[:, 3] - boxes[:, 1] + F32(1)
    boxes[:, :4] = np.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                             boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h], axis=1)
    return boxes


def _rerec(boxes):  # square each box about its centre
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * F32(0.5) - side * F32(0.5)
    boxes[:, 1] = boxes[:, 1] + h * F32(0.5) - side * F32(0.5)
    boxes[:, 2:4] = boxes[:, :2] + side[:, None]
    return boxes


def _crop_regions(boxes, height, width):
    """Each box's pixels as facenet's pad gives them (truncated, 1-based, clipped to the image):
    top, left, rows, columns (0-based), and which boxes have any (facenet crops only those)."""
    b = np.trunc(boxes[:, :4]).astype(np.int32)
    x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    ex, ey = np.minimum(b[:, 2], width), np.minimum(b[:, 3], height)
    rows, columns = ey - (y - 1), ex - (x - 1)
    return y - 1, x - 1, rows, columns, (rows > 0) & (columns > 0)


def _in_batches(network: Network, data: np.ndarray, batch_size: int = 512):  # facenet's fixed_batch_process
    out = [network(data[i : i + batch_size]) for i in range(0, len(data), batch_size)]
    return tuple(np.concatenate(v, axis=0) for v in zip(*out))


class MTCNN:
    """facenet-pytorch's MTCNN(keep_all=True) for detection: `detect` gives, per image, its boxes
    (N x 4, largest first as facenet's default select_largest orders them), probabilities (N) and
    landmarks (N x 5 x 2), or (None, None, None) where no face is found. `networks`: P-Net, R-Net
    and O-Net as callables (default: the ONNX files in `weights`, forensic/weights/ unless given,
    checked against its mtcnn.json, in ONNX Runtime on `device`, "cpu", "cuda" or "auto", with
    `threads` intra-op threads, 0 for ONNX Runtime's default). `identity`: what a report records
    of the detector (read_networks); None for networks given as callables."""

    def __init__(self, thresholds=(0.6, 0.7, 0.7), min_face_size: int = 20, factor: float = 0.709,
                 device: str = "cpu", threads: int = 0, networks: tuple[Network, Network, Network] | None = None,
                 weights: Path | None = None):
        self.thresholds = list(thresholds)
        self.min_face_size = min_face_size
        self.factor = factor
        self.identity: dict | None = None
        if networks is None:
            files, self.identity = read_networks(WEIGHTS if weights is None else weights)
            networks = tuple(OnnxNetwork(*files[name], device, threads) for name in NETWORKS)
        self.pnet, self.rnet, self.onet = networks

    def detect(self, images: np.ndarray):
        batch_boxes, batch_points = self._detect_face(images)
        results = []
        for boxes, points in zip(batch_boxes, batch_points):
            if len(boxes) == 0:
                results.append((None, None, None))
                continue
            order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
            boxes, points = boxes[order], points[order]
            results.append((boxes[:, :4], boxes[:, 4], points))
        return results

    def _crops(self, table, boxes, image_inds, size):
        """The boxes that have pixels in the image, their image indices and their pixels
        area-resampled to size x size and scaled for the network (N, 3, size, size)."""
        top, left, rows, columns, valid = _crop_regions(boxes, table.shape[1] - 1, table.shape[2] - 1)
        pixels = _regions(table, image_inds[valid], top[valid], left[valid], rows[valid], columns[valid], size)
        return boxes[valid], image_inds[valid], _nchw(pixels)

    def _detect_face(self, images: np.ndarray):
        """facenet's detect_face on a uint8 batch (B, H, W, 3): per image, boxes with scores (N x 5)
        and landmarks (N x 5 x 2), float32."""
        threshold = self.thresholds
        imgs = np.asarray(images)
        if imgs.ndim == 3:
            imgs = imgs[None]
        batch_size, h, w = imgs.shape[:3]
        m = 12.0 / self.min_face_size
        minl = min(h, w) * m
        scales, scale_i = [], m
        while minl >= 12:
            scales.append(scale_i)
            scale_i, minl = scale_i * self.factor, minl * self.factor
        empty = np.empty((0, 5), dtype=F32), np.empty((0, 5, 2), dtype=F32)
        if not scales:
            return [empty[0]] * batch_size, [empty[1]] * batch_size
        table = _integral(imgs)

        # First stage: P-Net over the pyramid, NMS within each scale and image, then each image
        boxes, image_inds, scale_picks, offset = [], [], [], 0
        for scale in scales:
            size = (int(h * scale + 1), int(w * scale + 1))
            reg, probs = self.pnet(_nchw(_pyramid_level(table, size)))[:2]
            boxes_scale, image_inds_scale = _candidates(reg, probs[:, 1], scale, threshold[0])
            boxes.append(boxes_scale)
            image_inds.append(image_inds_scale)
            scale_picks.append(batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], image_inds_scale, 0.5) + offset)
            offset += boxes_scale.shape[0]
        boxes, image_inds = np.concatenate(boxes, axis=0), np.concatenate(image_inds, axis=0)
        scale_picks = np.concatenate(scale_picks, axis=0)
        boxes, image_inds = boxes[scale_picks], image_inds[scale_picks]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds = boxes[pick], image_inds[pick]
        regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = np.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                          boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]], axis=1)
        boxes = _rerec(boxes)

        # Second stage: R-Net on 24 x 24 crops
        if len(boxes) > 0:
            boxes, image_inds, crops = self._crops(table, boxes, image_inds, 24)
        if len(boxes) > 0:
            reg, probs = _in_batches(self.rnet, crops)[:2]
            score = probs[:, 1]
            ipass = score > F32(threshold[1])
            boxes = np.concatenate((boxes[ipass, :4], score[ipass, None]), axis=1)
            image_inds, mv = image_inds[ipass], reg[ipass]
            pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
            boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
            boxes = _rerec(_bbreg(boxes, mv))

        # Third stage: O-Net on 48 x 48 crops, landmarks, NMS by the smaller box's area
        points = empty[1]
        if len(boxes) > 0:
            boxes, image_inds, crops = self._crops(table, boxes, image_inds, 48)
        if len(boxes) > 0:
            reg, landmarks, probs = _in_batches(self.onet, crops)[:3]
            score = probs[:, 1]
            ipass = score > F32(threshold[2])
            points = landmarks[ipass]
            boxes = np.concatenate((boxes[ipass, :4], score[ipass, None]), axis=1)
            image_inds, mv = image_inds[ipass], reg[ipass]
            w_i = boxes[:, 2] - boxes[:, 0] + F32(1)
            h_i = boxes[:, 3] - boxes[:, 1] + F32(1)
            points_x = w_i[:, None] * points[:, :5] + boxes[:, 0, None] - F32(1)
            points_y = h_i[:, None] * points[:, 5:10] + boxes[:, 1, None] - F32(1)
            points = np.stack((points_x, points_y), axis=2)
            boxes = _bbreg(boxes, mv)
            pick = _batched_nms_min(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
            boxes, image_inds, points = boxes[pick], image_inds[pick], points[pick]

        chosen = [np.nonzero(image_inds == b)[0] for b in range(batch_size)]
        return [boxes[c].copy() for c in chosen], [points[c].copy() for c in chosen]
