"""Scanning a batch of files, here or in several processes (`forensic scan --workers N`).

Each worker process loads the bundle and builds its own Scanner (its own MTCNN and ONNX
Runtime sessions) with one intra-op thread, so N workers keep N cores busy without
oversubscribing them. Files are handed out one at a time and the results come back in the
order of the inputs, so a report does not depend on N. Workers are started with `spawn`:
forking a process that already holds ONNX Runtime's thread pools (or CUDA) can deadlock.
Ctrl-C is the parent's alone: workers ignore SIGINT (which the terminal sends to the whole
process group), and the parent stops them and returns what had finished (ScanInterrupted).
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from forensic.errors import ForensicError
from forensic.scan import FileResult, Scanner

_scanner: Scanner | None = None


class ScanInterrupted(Exception):
    """Ctrl-C during a parallel scan; `results` holds the files finished before it (None elsewhere)."""

    def __init__(self, results: list[FileResult | None]):
        super().__init__("interrupted")
        self.results = results


def _start_worker(bundle_path: str, bundle_sha256: str, settings: dict[str, Any]) -> None:
    from forensic.bundle import load_bundle

    global _scanner
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    bundle = load_bundle(Path(bundle_path))
    if bundle.sha256 != bundle_sha256:  # replaced on disk since the parent loaded it
        raise ForensicError(f"{bundle_path}: changed while the scan was starting")
    _scanner = Scanner(bundle, threads=1, **settings)


def _scan(path: str) -> FileResult:
    assert _scanner is not None
    return _scanner.scan_file(Path(path))


def scan_in_processes(paths: list[Path], bundle_path: Path, bundle_sha256: str, settings: dict[str, Any],
                      workers: int, on_result: Callable[[int, FileResult], None] | None = None) -> list[FileResult]:
    """`Scanner(bundle, **settings).scan_file` on every path, in `workers` processes; results in
    input order. `on_result(index, result)` is called as each file finishes (in finishing order).
    Ctrl-C stops the workers at once and raises ScanInterrupted with the finished results."""
    context = multiprocessing.get_context("spawn")
    results: list[FileResult | None] = [None] * len(paths)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker,
                               initargs=(str(bundle_path), bundle_sha256, settings))
    try:
        futures = {pool.submit(_scan, str(path)): index for index, path in enumerate(paths)}
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if on_result:
                on_result(index, results[index])
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():  # a worker mid-file would finish it first
            child.terminate()
        raise ScanInterrupted(results) from None
    except BrokenProcessPool as exc:  # a worker could not start (or was killed): nothing to report per file
        raise ForensicError(f"a scanning process stopped ({exc}); scan in one process instead (forensic scan --workers 1, scan_batch processes=1)") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results  # type: ignore[return-value]


@dataclass
class Batch:
    """What a batch scan finished: results in input order; `not_scanned`, after Ctrl-C, the files
    it never finished (None: every file was scanned)."""

    results: list[FileResult]
    not_scanned: list[Path] | None = None


def scan_batch(paths: list[Path], scanner: Scanner, settings: dict[str, Any], processes: int = 1,
               on_file: Callable[[Path], None] | None = None,
               on_frames: Callable[[Path, int], None] | None = None,
               on_result: Callable[[FileResult], None] | None = None) -> Batch:
    """Every path scanned: by `scanner` in this process, or with `processes` > 1 by workers
    that build their own Scanner from the scanner's bundle and `settings` (the keyword arguments
    it was made with). `on_file` and `on_frames` report a file's start and its frames analysed
    (in this process only); `on_result` each result as it finishes. Ctrl-C ends the batch with
    the finished files and the rest listed as not scanned; a worker that cannot start raises
    ForensicError."""
    if processes > 1:
        report = (lambda index, result: on_result(result)) if on_result else None
        try:
            return Batch(scan_in_processes(paths, scanner.bundle.path, scanner.bundle.sha256, settings, processes,
                                           on_result=report))
        except ScanInterrupted as interrupted:
            return Batch([result for result in interrupted.results if result is not None],
                         [path for path, result in zip(paths, interrupted.results) if result is None])
    results: list[FileResult] = []
    try:
        for path in paths:
            if on_file:
                on_file(path)
            result = scanner.scan_file(path, on_frames=(lambda n, path=path: on_frames(path, n)) if on_frames else None)
            results.append(result)
            if on_result:
                on_result(result)
    except KeyboardInterrupt:
        return Batch(results, paths[len(results):])
    return Batch(results)
