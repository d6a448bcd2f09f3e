"""Following faces between full detections (`forensic scan --detect-every K`).

Full MTCNN searches the whole frame at every size (an image pyramid through P-Net, R-Net on
each candidate, O-Net on the survivors): 50-70 ms a 720p frame on a 2-core CPU. Between
detections a face is followed instead: O-Net alone, on the face's box from the previous
analysed frame, regresses the box onto where the face is now and says whether it still is a
face (about 2 ms a face). On FaceForensics++ videos at 32 frames (0.3-0.4 s apart) boxes
followed over a whole clip kept a median IoU of 0.93 with full detection's, without drift: the
same as O-Net re-run on full detection's own box (BENCHMARKS.md).

A frame is detected in full when its place among the file's analysed frames is a multiple of
K, and at once whenever following fails: a face's O-Net probability falls under
FOLLOW_CONFIDENCE and a search of the boxes around it does not find it again (it jumped, turned
away or left), a followed box is under the detector's minimum face size, or two followed boxes
land on one face. A face that appears
between two detections is found at the next one, at most K - 1 analysed frames late.
"""

from __future__ import annotations

import numpy as np

from forensic.faces import Face, FaceDetector

# Under it a followed face is lost. O-Net's own threshold in MTCNN is 0.7; followed FF++ faces
# scored 0.92 or more, a box left on the background after a jump scores near 0.
FOLLOW_CONFIDENCE = 0.9
SAME_FACE_IOU = 0.5  # two followed boxes overlapping this much have converged on one face
# A face one O-Net pass loses is looked for this far (in box sizes) around its box before the
# frame is searched in full: on bench/scan_stages.py's 720p clip, where the face moves up to its
# own width between analysed frames, K = 8 searched 24 of 32 frames in full without this, 9 with it.
SEARCH_STEP = 0.5


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class FaceFollower:
    """The faces of one file's analysed frames, given in order over successive calls, with
    whether each frame was detected in full (else its faces were followed)."""

    def __init__(self, detector: FaceDetector, every: int):
        self.detector, self.every = detector, every
        self.position = 0  # analysed frames seen so far
        self.previous: list[Face] = []

    def faces(self, images: list[np.ndarray]) -> list[tuple[list[Face], bool]]:
        due = [i for i in range(len(images)) if (self.position + i) % self.every == 0]
        # The frames due for detection are known in advance, so they are detected in one batch.
        detected = dict(zip(due, self.detector.detect([images[i] for i in due]))) if due else {}
        results = []
        for i, image in enumerate(images):
            full = i in detected
            faces = detected[i] if full else self._follow(image)
            if faces is None:  # a face was lost: this frame is detected in full after all
                faces, full = self.detector.detect([image])[0], True
            results.append((faces, full))
            self.previous = faces
        self.position += len(images)
        return results

    def _follow(self, image: np.ndarray) -> list[Face] | None:
        """The previous frame's faces followed into `image`, or None when one was lost."""
        boxes = [face.box for face in self.previous]
        followed: list[Face | None] = list(self.detector.refine(image, boxes))
        for i, face in enumerate(followed):
            if face.probability < FOLLOW_CONFIDENCE:
                followed[i] = self._search(image, boxes[i])
        if any(face is None or face.size < self.detector.min_face_size for face in followed):
            return None
        if any(iou(a.box, b.box) > SAME_FACE_IOU for i, a in enumerate(followed) for b in followed[i + 1:]):
            return None
        followed.sort(key=lambda face: -face.probability)  # as detect() orders them
        return followed

    def _search(self, image: np.ndarray, box) -> Face | None:
        """A face that moved further than one O-Net pass reaches (about a third of its size): the
        most face-like of the eight boxes SEARCH_STEP of a box away, refined once more."""
        x1, y1, x2, y2 = box
        width, height = x2 - x1, y2 - y1
        around = [(x1 + dx * width, y1 + dy * height, x2 + dx * width, y2 + dy * height)
                  for dx in (-SEARCH_STEP, 0, SEARCH_STEP) for dy in (-SEARCH_STEP, 0, SEARCH_STEP) if dx or dy]
        best = max(self.detector.refine(image, around), key=lambda face: face.probability)
        if best.probability < FOLLOW_CONFIDENCE or best.size < self.detector.min_face_size:
            return None
        [face] = self.detector.refine(image, [best.box])
        return face if face.probability >= FOLLOW_CONFIDENCE else None
