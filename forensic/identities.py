"""Grouping faces across sampled frames into identities, and scoring them.

Frames are sampled sparsely (32 over a whole video), so faces move a lot between samples:
faces are matched to tracks by the distance between box centres relative to box size (and a
size ratio check), one-to-one per frame (Hungarian assignment). A track is never closed early,
so a person who leaves and comes back near the same place keeps their identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from forensic import AGGREGATIONS, Aggregation

MAX_CENTRE_DISTANCE = 1.0  # in units of the mean box size
MAX_SIZE_RATIO = 2.0
# An identity decides the verdict only if its faces' median detection probability (MTCNN's O-Net)
# reaches this. The non-faces MTCNN finds in FF++ videos (a chest, a patch at the frame's edge) have
# medians of 0.76-0.87; at 640 px, seen in 5 of 32 frames, two of them called real videos fake. Not
# higher: O-Net is less sure of fakes (of 1,000 DFDC fake face crops 1.5 % score under 0.90, 2.8 %
# under 0.95; reals 0.3 %, 0.6 %), and a fake face beside a surer real one must still decide
# (BENCHMARKS.md).
MIN_DECIDING_PROBABILITY = 0.90


@dataclass
class Track:
    identity: int
    members: list[tuple[int, int]] = field(default_factory=list)  # (frame position, face index)
    last_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


def _centre_and_size(box) -> tuple[float, float, float]:
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, (y1 + y2) / 2, math.sqrt(max(x2 - x1, 1e-6) * max(y2 - y1, 1e-6))


def _cost(box_a, box_b) -> float:
    ax, ay, asize = _centre_and_size(box_a)
    bx, by, bsize = _centre_and_size(box_b)
    ratio = max(asize, bsize) / min(asize, bsize)
    if ratio > MAX_SIZE_RATIO:
        return math.inf
    return math.hypot(ax - bx, ay - by) / ((asize + bsize) / 2)


def group_identities(boxes_per_frame: list[list[tuple[float, float, float, float]]]) -> list[Track]:
    """Assign every face (frame position, face index) to an identity; identities are numbered
    in order of first appearance."""
    tracks: list[Track] = []
    for position, boxes in enumerate(boxes_per_frame):
        unmatched = set(range(len(boxes)))
        if tracks and boxes:
            cost = np.array([[_cost(t.last_box, b) for b in boxes] for t in tracks])
            finite = np.where(np.isfinite(cost), cost, 1e9)
            # imported here: scipy.optimize costs ~0.25 s of a one-image scan's start, which never matches
            from scipy.optimize import linear_sum_assignment

            rows, cols = linear_sum_assignment(finite)
            for row, col in zip(rows, cols):
                if cost[row, col] <= MAX_CENTRE_DISTANCE:
                    tracks[row].members.append((position, col))
                    tracks[row].last_box = boxes[col]
                    unmatched.discard(col)
        for col in sorted(unmatched):
            tracks.append(Track(identity=len(tracks), members=[(position, col)], last_box=boxes[col]))
    return tracks


def confident_score(scores: np.ndarray, high: float = 0.8, low: float = 0.2) -> float:
    """The DFDC winner's "confident strategy": if enough frames are confidently fake, average
    those; if nearly all are confidently real, average those; else average all."""
    scores = np.asarray(scores, dtype=np.float64)
    confident_fake = scores[scores > high]
    if len(confident_fake) > len(scores) / 2.5 and len(confident_fake) > 11:
        return float(confident_fake.mean())
    confident_real = scores[scores < low]
    if len(confident_real) > 0.9 * len(scores):
        return float(confident_real.mean())
    return float(scores.mean())


def aggregate(scores, how: Aggregation) -> float:
    if how == "confident":
        return confident_score(scores)
    if how == "mean":
        return float(np.mean(scores))
    if how == "max":
        return float(np.max(scores))
    raise ValueError(f"unknown aggregation {how!r}: use one of {', '.join(AGGREGATIONS)}")


def minimum_frames(frames_with_faces: int) -> int:
    """Identities seen in fewer frames than this are reported but do not decide the verdict
    (a one-frame false detection must not make a video fake)."""
    return max(1, math.ceil(0.1 * frames_with_faces))
