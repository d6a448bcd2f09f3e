"""The scan thread: a queue of files to scan and the loop that scans them with forensic's one
Scanner, answering from the cache where it can and reporting to the UI through messages."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from textual.message import Message

from forensic.bundle import Bundle
from forensic.inference import Device
from forensic.inputs import media_kind
from forensic import DEFAULT_FRAMES
from forensic.scan import FileResult, Scanner
from forensic.selftest import SelfTestSettings
from forensic.tui.cache import ResultCache
from forensic.tui.messages import (FileFinished, FileProgress, FileRequeued, FileStarted, ScanNotice,
                                   ScannerFailed, ScannerReady)


@dataclass(frozen=True)
class ScanSettings:
    """How the UI's scanners are made: `forensic scan`'s defaults unless a test asks otherwise."""

    bundle: Bundle
    frames: int = DEFAULT_FRAMES
    device: Device = "auto"
    self_test_every_file: bool = False  # --self-test: every verdict, not only on request
    self_test: SelfTestSettings = field(default_factory=SelfTestSettings)

    def build_scanner(self, self_test: bool = False, scanner: Scanner | None = None) -> Scanner:
        """A Scanner; with `scanner`, one that shares its face detector (loaded once)."""
        return Scanner(self.bundle, device=self.device, frames=self.frames, keep_crops=True,
                       self_test=self.self_test if self_test else None,
                       detector=scanner.detector if scanner else None)


@dataclass(frozen=True)
class ScanJob:
    path: Path
    force: bool = False  # scan even if the cache has a result
    self_test: bool = False
    urgent: bool = False  # asked for by the user: runs before the folder's queue, even when stopped


class ScanAborted(BaseException):
    """Raised from the scanner's check (called per MiB hashed, decoded frame and self-test step)
    to stop a file mid-scan (stop or quit). A BaseException, so that Scanner.scan_file's
    per-file error handling does not turn it into an error verdict."""


class ScanQueue:
    """The folder's files in order, and the user's requests before them. Stopping holds back
    the folder's files only."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._urgent: deque[ScanJob] = deque()
        self._background: deque[ScanJob] = deque()
        self._stopped = False

    def add(self, jobs: Iterable[ScanJob]) -> None:
        """Queue jobs; a file's new job takes the place of the one it had waiting and keeps what
        that one asked for (a rescan, a self-test, urgency), so no request is lost."""
        with self._condition:
            for job in jobs:
                waiting = next((old for old in (*self._urgent, *self._background) if old.path == job.path), None)
                if waiting is not None:
                    (self._urgent if waiting.urgent else self._background).remove(waiting)
                    job = ScanJob(job.path, force=job.force or waiting.force, self_test=job.self_test or waiting.self_test,
                                  urgent=job.urgent or waiting.urgent)
                (self._urgent if job.urgent else self._background).append(job)
            self._condition.notify_all()

    def put_back(self, job: ScanJob) -> None:
        """Return an interrupted job to the front of its queue."""
        with self._condition:
            (self._urgent if job.urgent else self._background).appendleft(job)
            self._condition.notify_all()

    def take(self, timeout: float) -> ScanJob | None:
        """The next job, waiting up to `timeout` seconds for one."""
        with self._condition:
            self._condition.wait_for(lambda: self._urgent or (self._background and not self._stopped), timeout)
            if self._urgent:
                return self._urgent.popleft()
            if self._background and not self._stopped:
                return self._background.popleft()
            return None

    @property
    def stopped(self) -> bool:
        return self._stopped

    def set_stopped(self, stopped: bool) -> None:
        with self._condition:
            self._stopped = stopped
            self._condition.notify_all()

    def __len__(self) -> int:
        with self._condition:
            return len(self._urgent) + len(self._background)


class ScanService:
    """Runs in one worker thread: builds the scanner, then scans queued files one at a time
    until shut down. Everything it learns goes to `post` as a message (thread-safe)."""

    def __init__(self, settings: ScanSettings, cache_root: Path, post: Callable[[Message], object]):
        self.settings = settings
        self.cache_root = Path(cache_root)
        self.queue = ScanQueue()
        self.scanner: Scanner | None = None
        self._self_tester: Scanner | None = None
        self._cache: ResultCache | None = None
        self._post = post
        self._shutdown = threading.Event()
        self._abort = threading.Event()
        self._lock = threading.Lock()
        self._current: ScanJob | None = None
        self._cache_warned = False

    def run(self) -> None:
        try:
            self.scanner = self.settings.build_scanner(self_test=self.settings.self_test_every_file)
            self._cache = ResultCache(self.cache_root, self.scanner)
        except Exception as exc:  # the thread's boundary: the UI says it and stays open
            self._post(ScannerFailed(f"cannot load the detector: {exc}"))
            return
        self._post(ScannerReady(provider="+".join(self.scanner.runner.providers)))
        while not self._shutdown.is_set():
            job = self.queue.take(timeout=0.2)
            if job is not None:
                self._run(job)

    def stop_folder_scan(self, stopped: bool) -> None:
        """Stop (or resume) the folder's queue; a folder file being scanned goes back to it."""
        self.queue.set_stopped(stopped)
        with self._lock:
            if stopped and self._current is not None and not self._current.urgent:
                self._abort.set()

    def shutdown(self) -> None:
        self._shutdown.set()
        self._abort.set()

    def _run(self, job: ScanJob) -> None:
        with self._lock:
            self._current = job
            self._abort.clear()
        self._post(FileStarted(job.path))
        try:
            result, from_cache = self._result(job)
        except ScanAborted:
            self.queue.put_back(job)
            self._post(FileRequeued(job.path))
            return
        except Exception as exc:  # the thread's boundary: one file's failure must not end the scan
            result = FileResult(path=str(job.path), kind=media_kind(job.path), sha256=None, verdict="error", score=None,
                                threshold=self.scanner.threshold, error=f"{job.path}: unexpected {type(exc).__name__}: {exc}")
            from_cache = False
        finally:
            with self._lock:
                self._current = None
        self._post(FileFinished(job.path, result, from_cache))

    def _result(self, job: ScanJob) -> tuple[FileResult, bool]:
        self_test = job.self_test or self.settings.self_test_every_file
        if not job.force:
            wanted = (self.settings.self_test.steps, self.settings.self_test.epsilons) if self_test else None
            cached = self._cache.get(job.path, self_test=wanted, check=self._check_abort)
            if cached is not None:
                return cached, True
        scanner = self._scanner(self_test)
        # The cache lookup hashed the file already; scan_file hashes it again, before analysis,
        # as the chain of custody asks (it may have changed in between).
        result = scanner.scan_file(job.path, on_frames=lambda frames: self._progress(job.path, frames),
                                   check=self._check_abort)
        if result.verdict != "error":  # errors are not cached: a file may become readable
            try:
                self._cache.put(result)
            except OSError as exc:
                if not self._cache_warned:
                    self._cache_warned = True
                    self._post(ScanNotice(f"results are not cached: {exc}"))
        return result, False

    def _scanner(self, self_test: bool) -> Scanner:
        if not self_test or self.scanner.self_test is not None:
            return self.scanner
        if self._self_tester is None:
            self._self_tester = self.settings.build_scanner(self_test=True, scanner=self.scanner)
        return self._self_tester

    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise ScanAborted

    def _progress(self, path: Path, frames: int) -> None:
        self._check_abort()
        self._post(FileProgress(path, frames))
