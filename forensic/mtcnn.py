"""MTCNN face detection without torchvision: facenet-pytorch's networks and detect_face, ported.

facenet-pytorch's `detect_face` imports torchvision for `batched_nms`, and importing torchvision
imports `torch._dynamo` (sympy, triton, inductor): about half of a one-image `forensic scan`
(BENCHMARKS.md, issue 15). This module runs the same pipeline with the same weights (facenet's
shipped pnet.pt, rnet.pt and onet.pt, loaded from its package folder without importing the
package) and an NMS that reproduces torchvision's, so the boxes, probabilities and landmarks
equal facenet-pytorch's `MTCNN(keep_all=True).detect` (tests/test_mtcnn.py), whose crops the
shipped models were trained on.

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

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.functional import interpolate


def _weights(name: str) -> dict:
    """facenet-pytorch's shipped state dict, found without importing facenet_pytorch."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("facenet-pytorch (its MTCNN weights) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / f"{name}.pt"
    return torch.load(path, map_location="cpu", weights_only=True)


def network_input(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 255] scaled to [-1, 1], as MTCNN's networks take them."""
    return (pixels - 127.5) * 0.0078125


class PNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, kernel_size=3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, kernel_size=3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, kernel_size=3), nn.PReLU(32)
        self.conv4_1, self.softmax4_1 = nn.Conv2d(32, 2, kernel_size=1), nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)
        self.load_state_dict(_weights("pnet"))
        self.eval()

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, kernel_size=3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, kernel_size=3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, kernel_size=2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.softmax5_1 = nn.Linear(128, 2), nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)
        self.load_state_dict(_weights("rnet"))
        self.eval()

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, kernel_size=3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, kernel_size=3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, kernel_size=3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, kernel_size=2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)
        self.load_state_dict(_weights("onet"))
        self.eval()

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """torchvision.ops.nms on the CPU: boxes by score, highest first (a stable sort), each
    suppressing the later ones whose IoU with it exceeds `threshold`; areas without MTCNN's +1."""
    b = boxes.detach().cpu().numpy()
    order = scores.detach().cpu().sort(stable=True, descending=True)[1].numpy()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2) - np.maximum(y1[i], y1))
        inter = w * h
        suppressed |= (inter / (areas[i] + areas - inter)).astype(np.float64) > threshold  # C++: float > double
    return torch.as_tensor(np.array(keep, dtype=np.int64), device=boxes.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float) -> torch.Tensor:
    """torchvision.ops.batched_nms, both of its CPU strategies (which differ in float rounding)."""
    if boxes.numel() > 4000:  # torchvision: NMS per category, then all kept by score
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            current = torch.where(idxs == class_id)[0]
            keep_mask[current[nms(boxes[current], scores[current], threshold)]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True)[1]]
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
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
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    keep = _nms_min((boxes + offsets[:, None]).cpu().numpy(), scores.cpu().numpy(), threshold)
    return torch.as_tensor(keep, dtype=torch.long, device=boxes.device)


def _candidates(reg, probs, scale, threshold):  # facenet's generateBoundingBox
    reg = reg.permute(1, 0, 2, 3)
    mask = probs >= threshold
    mask_inds = mask.nonzero()
    score = probs[mask]
    reg = reg[:, mask].permute(1, 0)
    bb = mask_inds[:, 1:].type(reg.dtype).flip(1)
    q1 = ((2 * bb + 1) / scale).floor()
    q2 = ((2 * bb + 12) / scale).floor()
    return torch.cat([q1, q2, score.unsqueeze(1), reg], dim=1), mask_inds[:, 0]


def _bbreg(boxes, reg):
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] = torch.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                                boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h]).permute(1, 0)
    return boxes


def _rerec(boxes):  # square each box about its centre
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = torch.max(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, :2] + side.repeat(2, 1).permute(1, 0)
    return boxes


def _crops(imgs, boxes, image_inds, size):
    """Each box's pixels (1-based, clipped to the image as facenet's pad does), area-resampled to
    size x size and scaled to [-1, 1]."""
    h, w = imgs.shape[2:4]
    b = boxes.trunc().int().cpu().numpy()
    x, y, ex, ey = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    x[x < 1], y[y < 1] = 1, 1
    ex[ex > w], ey[ey > h] = w, h
    crops = [interpolate(imgs[image_inds[k], :, y[k] - 1 : ey[k], x[k] - 1 : ex[k]].unsqueeze(0),
                         size=(size, size), mode="area")
             for k in range(len(y)) if ey[k] > y[k] - 1 and ex[k] > x[k] - 1]
    return network_input(torch.cat(crops, dim=0))


def _in_batches(model, data, batch_size=512):  # facenet's fixed_batch_process
    out = [model(data[i : i + batch_size]) for i in range(0, len(data), batch_size)]
    return tuple(torch.cat(v, dim=0) for v in zip(*out))


class MTCNN:
    """facenet-pytorch's MTCNN(keep_all=True) for detection: `detect` gives, per image, its boxes
    (N x 4, largest first as facenet's default select_largest orders them), probabilities (N) and
    landmarks (N x 5 x 2), or (None, None, None) where no face is found."""

    def __init__(self, thresholds=(0.6, 0.7, 0.7), min_face_size: int = 20, factor: float = 0.709, device="cpu"):
        self.thresholds = list(thresholds)
        self.min_face_size = min_face_size
        self.factor = factor
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = (net.to(self.device) for net in (PNet(), RNet(), ONet()))

    @torch.no_grad()
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

    def _detect_face(self, images: np.ndarray):
        """facenet's detect_face on a uint8 batch (B, H, W, 3): per image, boxes with scores (N x 5)
        and landmarks (N x 5 x 2)."""
        threshold, device = self.thresholds, self.device
        imgs = torch.as_tensor(np.array(images), device=device)
        if imgs.ndim == 3:
            imgs = imgs.unsqueeze(0)
        imgs = imgs.permute(0, 3, 1, 2).type(next(self.pnet.parameters()).dtype)
        batch_size = len(imgs)
        h, w = imgs.shape[2:4]
        m = 12.0 / self.min_face_size
        minl = min(h, w) * m
        scales, scale_i = [], m
        while minl >= 12:
            scales.append(scale_i)
            scale_i, minl = scale_i * self.factor, minl * self.factor

        # First stage: P-Net over the pyramid, NMS within each scale and image, then each image
        boxes, image_inds, scale_picks, offset = [], [], [], 0
        for scale in scales:
            im_data = interpolate(imgs, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            reg, probs = self.pnet(network_input(im_data))
            boxes_scale, image_inds_scale = _candidates(reg, probs[:, 1], scale, threshold[0])
            boxes.append(boxes_scale)
            image_inds.append(image_inds_scale)
            scale_picks.append(batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], image_inds_scale, 0.5) + offset)
            offset += boxes_scale.shape[0]
        if not scales:
            empty = np.empty((0, 5), dtype=np.float32), np.empty((0, 5, 2), dtype=np.float32)
            return [empty[0]] * batch_size, [empty[1]] * batch_size
        boxes, image_inds = torch.cat(boxes, dim=0), torch.cat(image_inds, dim=0)
        scale_picks = torch.cat(scale_picks, dim=0)
        boxes, image_inds = boxes[scale_picks], image_inds[scale_picks]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds = boxes[pick], image_inds[pick]
        regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                             boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]]).permute(1, 0)
        boxes = _rerec(boxes)

        # Second stage: R-Net on 24 x 24 crops
        if len(boxes) > 0:
            reg, probs = _in_batches(self.rnet, _crops(imgs, boxes, image_inds, 24))
            score = probs.permute(1, 0)[1, :]
            ipass = score > threshold[1]
            boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
            image_inds = image_inds[ipass]
            mv = reg.permute(1, 0)[:, ipass].permute(1, 0)
            pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
            boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
            boxes = _rerec(_bbreg(boxes, mv))

        # Third stage: O-Net on 48 x 48 crops, landmarks, NMS by the smaller box's area
        points = torch.zeros(0, 5, 2, device=device)
        if len(boxes) > 0:
            reg, landmarks, probs = _in_batches(self.onet, _crops(imgs, boxes, image_inds, 48))
            score = probs.permute(1, 0)[1, :]
            ipass = score > threshold[2]
            points = landmarks.permute(1, 0)[:, ipass]
            boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
            image_inds = image_inds[ipass]
            mv = reg.permute(1, 0)[:, ipass].permute(1, 0)
            w_i = boxes[:, 2] - boxes[:, 0] + 1
            h_i = boxes[:, 3] - boxes[:, 1] + 1
            points_x = w_i.repeat(5, 1) * points[:5, :] + boxes[:, 0].repeat(5, 1) - 1
            points_y = h_i.repeat(5, 1) * points[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
            points = torch.stack((points_x, points_y)).permute(2, 1, 0)
            boxes = _bbreg(boxes, mv)
            pick = _batched_nms_min(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
            boxes, image_inds, points = boxes[pick], image_inds[pick], points[pick]

        boxes, points, image_inds = boxes.cpu().numpy(), points.cpu().numpy(), image_inds.cpu().numpy()
        chosen = [np.where(image_inds == b)[0] for b in range(batch_size)]
        return [boxes[c].copy() for c in chosen], [points[c].copy() for c in chosen]
