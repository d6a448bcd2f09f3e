"""Finished results on disk, so that reopening a folder does not rescan it.

An entry is keyed by the bundle's SHA-256 and the input file's SHA-256:
`ROOT/<bundle sha256>/<file sha256>.json` holds the file's report entry (as in the JSON report)
and the settings it was made with; `<file sha256>.npz` beside it holds each identity's most
fake face crop and its class activation maps, for thumbnails, heatmaps and HTML exports.
An entry made with other settings (frames, threshold, execution provider, tool version, face
detector weights…) is not reused. The cache lives outside the scanned folder: inputs are never
written to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from forensic.bundle import sha256_file
from forensic.outputs import atomic_write
from forensic.report import build_report, file_entry, result_from_entry
from forensic.scan import FileResult, Scanner

CACHE_ENV = "FORENSIC_CACHE_DIR"


def default_cache_dir() -> Path:
    """$FORENSIC_CACHE_DIR, else $XDG_CACHE_HOME/deepfake-forensics, else ~/.cache/deepfake-forensics."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "deepfake-forensics"


def self_test_matches(self_test: dict | None, steps: int, epsilons: tuple[float, ...]) -> bool:
    # The schedule searched; results from before the bisection tried every ε, so their trials are it.
    schedule = self_test.get("epsilons") or [trial["epsilon"] for trial in self_test["trials"]] if self_test else None
    return self_test is not None and self_test.get("steps") == steps and tuple(schedule) == tuple(sorted(epsilons))


class ResultCache:
    """The results of one bundle with one scanner's settings."""

    def __init__(self, root: Path, scanner: Scanner):
        report = build_report([], scanner)
        self.folder = Path(root) / scanner.bundle.sha256
        # What else changes a result: reused only when all of it is the same.
        self.settings = {"tool_version": report["tool_version"], "provider": report["provider"],
                         "settings": report["settings"], "versions": report["versions"],
                         "face_detector": report["face_detector"]}

    def _paths(self, file_sha256: str) -> tuple[Path, Path]:
        return self.folder / f"{file_sha256}.json", self.folder / f"{file_sha256}.npz"

    def get(self, path: Path, self_test: tuple[int, tuple[float, ...]] | None = None,
            check: Callable[[], None] | None = None) -> FileResult | None:
        """The cached result for the file now at `path`, or None. With `self_test` (steps,
        epsilons), only an entry that holds a self-test made with those settings."""
        try:
            digest = sha256_file(path, check)  # check may abandon hashing a large file
        except OSError:
            return None  # unreadable input: the scan reports it
        entry_path, crops_path = self._paths(digest)
        try:
            stored = json.loads(entry_path.read_text("utf-8"))
            if stored.get("settings") != self.settings or stored["entry"].get("sha256") != digest:
                return None
            if self_test is not None and not self_test_matches(stored["entry"].get("self_test"), *self_test):
                return None
            result = result_from_entry(stored["entry"])
            result.crops = _load_crops(crops_path, stored.get("crops", []))
        except Exception:
            # No entry, or a damaged one (a truncated .npz raises BadZipFile, an empty one
            # EOFError, JSON of another shape AttributeError): a miss, so the file is scanned
            # again and put() replaces the entry.
            return None
        result.path = str(path)  # the same content may have been scanned under another name
        return result

    def put(self, result: FileResult) -> None:
        """Store a finished result (raises OSError when the cache cannot be written)."""
        entry_path, crops_path = self._paths(result.sha256)
        self.folder.mkdir(parents=True, exist_ok=True)
        arrays, listing = {}, []
        for number, ((position, index), (crop, cams)) in enumerate(sorted(result.crops.items())):
            arrays[f"crop{number}"] = crop
            for model_number, (model, cam) in enumerate(cams.items()):
                arrays[f"cam{number}_{model_number}"] = cam
            listing.append({"frame": position, "face": index, "models": list(cams)})
        atomic_write(crops_path, lambda handle: np.savez_compressed(handle, **arrays))
        stored = {"settings": self.settings, "entry": file_entry(result), "crops": listing}
        atomic_write(entry_path, lambda handle: handle.write(json.dumps(stored).encode("utf-8")))


def _load_crops(path: Path, listing: list[dict]) -> dict:
    if not listing:
        return {}
    with np.load(path) as arrays:
        return {(item["frame"], item["face"]): (arrays[f"crop{number}"],
                                                {model: arrays[f"cam{number}_{m}"] for m, model in enumerate(item["models"])})
                for number, item in enumerate(listing)}


