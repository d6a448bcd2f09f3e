"""forensic scan's options for analysts and pipelines, on the default bundle."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner

from forensic.media import sample_video_frames
from forensic.report import report_schema
from forensic.cli import app

runner = CliRunner()


def write_vfr_video(path: Path, times: list[float]) -> Path:
    """Frames at the given presentation times (seconds): a variable-frame-rate clip."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10 % 255, np.uint8), format="rgb24")
            frame.pts = int(round(t * 1000))
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_fps_sampling_follows_timestamps_not_frame_numbers(tmp_path):
    # dense at first (10 frames in 0.1 s), then one frame every 0.5 s
    times = [i * 0.01 for i in range(10)] + [0.5 + 0.5 * i for i in range(6)]
    path = write_vfr_video(tmp_path / "vfr.mp4", times)
    frames = list(sample_video_frames(path, count=None, fps=2.0))
    got = [round(f.time, 2) for f in frames]
    assert got == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


def test_from_list_globs_csv_and_quiet(sample_media, tmp_path):
    folder = sample_media["astronaut.png"].parent
    listing = tmp_path / "list.txt"
    listing.write_text(f"# inputs\n{sample_media['coffee_no_face.jpg']}\n\n")
    table = tmp_path / "summary.csv"
    report_path = tmp_path / "report.json"
    result = runner.invoke(app, ["scan", str(folder), "--include", "*.png", "--include", "*.mp4",
                                 "--exclude", "*blended*", "--from", str(listing), "--csv", str(table),
                                 "--json", str(report_path), "--frames", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output == ""  # --quiet: no table, no progress
    names = sorted(Path(f["path"]).name for f in json.loads(report_path.read_text())["files"])
    assert names == ["astronaut.png", "astronaut_pan.mp4", "coffee_no_face.jpg"]
    rows = list(csv.DictReader(table.open()))
    assert sorted(Path(r["path"]).name for r in rows) == names
    verdicts = {Path(r["path"]).name: r["verdict"] for r in rows}
    assert verdicts["coffee_no_face.jpg"] == "no-face"
    assert {verdicts["astronaut.png"], verdicts["astronaut_pan.mp4"]} <= {"real", "fake", "uncertain"}


def test_detect_every_is_applied_and_reported(sample_media):
    video = str(sample_media["astronaut_pan.mp4"])
    result = runner.invoke(app, ["scan", video, "--frames", "6", "--detect-every", "3", "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["settings"]["detect_every"] == 3
    assert [frame["detected"] for frame in report["files"][0]["frames"]] == [True, False, False] * 2
    refused = runner.invoke(app, ["scan", video, "--detect-every", "0"])
    assert refused.exit_code == 2 and "--detect-every" in refused.output


def test_uncertain_band_gives_uncertain_verdicts(sample_media, tmp_path):
    image = str(sample_media["astronaut.png"])
    first = runner.invoke(app, ["scan", image, "--json", "-"])
    score = json.loads(first.stdout)["files"][0]["score"]
    threshold = min(score + 0.01, 1.0)
    report_path = tmp_path / "report.json"
    result = runner.invoke(app, ["scan", image, "--threshold", str(threshold), "--uncertain-band", "0.05",
                                 "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, report_schema())
    assert report["files"][0]["verdict"] == "uncertain" and report["files"][0]["score"] == score
    assert report["settings"]["uncertain_band"] == 0.05
    # The override is said, beside the bundle's own threshold.
    from forensic.bundle import DEFAULT_BUNDLE, load_bundle

    bundle_threshold = load_bundle(DEFAULT_BUNDLE).threshold
    assert report["settings"]["threshold"] == threshold and report["bundle"]["decision_threshold"] == bundle_threshold
    assert f"(given; the bundle's is {bundle_threshold:g})" in result.output
    assert report["settings"]["face_detector_device"] == "cpu"
    outside = runner.invoke(app, ["scan", image, "--threshold", str(threshold), "--uncertain-band", "0.001", "--json", "-"])
    assert json.loads(outside.stdout)["files"][0]["verdict"] in ("real", "fake")


def test_the_report_names_the_face_detector_by_the_files_that_ran(sample_media, reexported_mtcnn_weights, tmp_path, monkeypatch):
    """`face_detector`: MTCNN and the SHA-256 of each ONNX file loaded, so other files give other
    hashes; files that do not match mtcnn.json stop the scan with a one-line error naming the file."""
    import hashlib

    import forensic.mtcnn

    def loaded(report: dict) -> dict[str, str]:
        return {network["name"]: network["sha256"] for network in report["face_detector"]["networks"]}

    def files(folder: Path) -> dict[str, str]:
        return {name: hashlib.sha256((folder / f"{name}.onnx").read_bytes()).hexdigest() for name in forensic.mtcnn.NETWORKS}

    image = str(sample_media["astronaut.png"])
    shipped = json.loads(runner.invoke(app, ["scan", image, "--json", "-"]).stdout)
    jsonschema.validate(shipped, report_schema())
    assert (shipped["face_detector"]["name"], shipped["face_detector"]["weights"]) == \
        ("MTCNN", "facenet-pytorch 2.5.3, exported to ONNX")
    assert loaded(shipped) == files(forensic.mtcnn.WEIGHTS)

    monkeypatch.setattr(forensic.mtcnn, "WEIGHTS", reexported_mtcnn_weights)  # the folder a scan's detector loads
    other = json.loads(runner.invoke(app, ["scan", image, "--json", "-"]).stdout)
    assert loaded(other) == files(reexported_mtcnn_weights) and loaded(other)["pnet"] != loaded(shipped)["pnet"]
    assert other["files"][0]["frames"] == shipped["files"][0]["frames"]  # the same network in other bytes

    tampered = tmp_path / "weights"
    shutil.copytree(reexported_mtcnn_weights, tampered)
    onet = tampered / "onet.onnx"
    onet.write_bytes(onet.read_bytes()[:-1])
    monkeypatch.setattr(forensic.mtcnn, "WEIGHTS", tampered)
    result = runner.invoke(app, ["scan", image, "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"error: {onet}: SHA-256 ") and "does not match mtcnn.json's" in result.output
    assert not (tmp_path / "report.json").exists()


def test_usage_errors_are_one_line(tmp_path):
    for args in (["scan"], ["scan", str(tmp_path), "--aggregate", "median"],
                 ["scan", str(tmp_path), "--from", str(tmp_path / "missing.txt")],
                 ["scan", str(tmp_path), "--bundle", str(tmp_path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output


def test_device_cuda_refuses_to_fall_back_to_the_cpu(sample_media):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has CUDA")
    result = runner.invoke(app, ["scan", str(sample_media["astronaut.png"]), "--device", "cuda"])
    assert result.exit_code == 2
    assert "could not load CUDAExecutionProvider" in result.output


def set_display_rotation(path: Path) -> Path:
    """Rewrite the mp4 track header's matrix to one that players show rotated 90° clockwise
    (FFmpeg reports a display rotation of -90): what phones write for portrait video."""
    import struct

    data = bytearray(path.read_bytes())
    header = data.find(b"tkhd")
    assert header > 0 and data[header + 4] == 0  # version 0 layout
    matrix = header + 4 + 40
    one, minus_one = 0x00010000, (-0x00010000) & 0xFFFFFFFF
    data[matrix:matrix + 36] = struct.pack(">9I", 0, one, 0, minus_one, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(data)
    return path


def test_rotated_video_is_analysed_upright(tmp_path):
    from trainer.data.synthetic import astronaut, panning_frames, write_video

    image, _ = astronaut()
    upright = panning_frames(image, count=3)
    # stored sideways (rotated a quarter turn counter-clockwise), displayed upright
    path = tmp_path / "portrait.mp4"
    write_video(path, [np.ascontiguousarray(np.rot90(frame)) for frame in upright])
    set_display_rotation(path)
    frames = list(sample_video_frames(path, count=3))
    assert frames[0].image.shape == upright[0].shape
    assert np.abs(frames[0].image.astype(int) - upright[0].astype(int)).mean() < 8  # H.264 noise only
    report = json.loads(runner.invoke(app, ["scan", str(path), "--frames", "3", "--json", "-"]).stdout)
    assert report["files"][0]["faces"] == 1 and report["files"][0]["verdict"] != "no-face"


def test_file_names_are_shown_as_they_are_not_as_markup(sample_media, tmp_path):
    # '[id]' is how downloaders name videos; '[/]' in a path once crashed the table after the scan.
    import shutil

    tagged = tmp_path / "talk [abc123].png"
    shutil.copyfile(sample_media["astronaut.png"], tagged)
    (tmp_path / "a[").mkdir()
    closing = tmp_path / "a[" / "]b.png"
    shutil.copyfile(sample_media["coffee_no_face.jpg"], closing)
    report_path = tmp_path / "report.json"
    result = runner.invoke(app, ["scan", str(tagged), str(closing), "--json", str(report_path)],
                           env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert str(tagged) in result.output and str(closing) in result.output
    files = json.loads(report_path.read_text())["files"]
    assert [f["path"] for f in files] == [str(tagged), str(closing)]


def test_terminal_codes_in_a_file_name_are_shown_escaped_and_reported_as_they_are(sample_media, tmp_path):
    # A downloaded file can be named so that printing it retitles the window and clears the screen.
    import shutil

    from forensic.tui.state import FileRecord

    hostile = tmp_path / "evil\x1b]0;PWNED\x07\x1b[2J\u202egpj.exe"
    shutil.copyfile(sample_media["corrupt.jpg"], hostile)
    result = runner.invoke(app, ["scan", str(hostile), "--json", str(tmp_path / "r.json")], env={"COLUMNS": "400"})
    assert result.exit_code == 1  # the file is corrupt
    assert "\x1b" not in result.output and "\u202e" not in result.output
    assert "evil\\x1b]0;PWNED\\x07\\x1b[2J\\u202egpj.exe" in result.output  # in the table and the error line
    assert json.loads((tmp_path / "r.json").read_text())["files"][0]["path"] == str(hostile)  # the report keeps it
    assert FileRecord.for_path(hostile, tmp_path).name == "evil\\x1b]0;PWNED\\x07\\x1b[2J\\u202egpj.exe"  # the TUI's


def test_a_name_that_is_not_utf8_is_reported_in_every_output(sample_media, tmp_path):
    # Linux names are bytes; such a name once made --csv and --html end in a UnicodeEncodeError
    # traceback after the scan, leaving a CSV with only its header.
    import os
    import shutil

    raw_name = os.fsencode(tmp_path) + b"/caf\xe9.jpg"  # Latin-1, as an old camera or zip writes it
    shutil.copyfile(sample_media["coffee_no_face.jpg"], raw_name)
    name = os.fsdecode(raw_name)
    result = runner.invoke(app, ["scan", name, "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"),
                                 "--html", str(tmp_path / "html")])
    assert result.exit_code == 0, result.output
    [entry] = json.loads((tmp_path / "r.json").read_text(encoding="ascii"))["files"]
    assert os.fsencode(entry["path"]) == raw_name and entry["verdict"] == "no-face"
    with open(tmp_path / "r.csv", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        [row] = csv.DictReader(handle)
    assert os.fsencode(row["path"]) == raw_name and row["verdict"] == "no-face"  # the name's own bytes
    assert "caf\\udce9.jpg" in (tmp_path / "html" / "index.html").read_text(encoding="utf-8")


def test_outputs_are_checked_before_scanning_and_never_overwrite_an_input(sample_media, tmp_path):
    image = sample_media["astronaut.png"]
    before = image.read_bytes()
    for args, problem in ((["--csv", str(image)], "is one of the inputs"),
                          (["--json", str(tmp_path)], "is a folder, not a file to write to")):
        result = runner.invoke(app, ["scan", str(image), *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and problem in result.output and result.output.count("\n") == 1
    assert image.read_bytes() == before


def test_a_file_reached_twice_is_scanned_once(sample_media, tmp_path, monkeypatch):
    folder = sample_media["coffee_no_face.jpg"].parent
    monkeypatch.chdir(folder)
    result = runner.invoke(app, ["scan", "coffee_no_face.jpg", "./coffee_no_face.jpg", str(folder),
                                 "--include", "coffee*", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert [f["path"] for f in json.loads(result.stdout)["files"]] == ["coffee_no_face.jpg"]


def test_from_stdin_reads_a_path_list(sample_media):
    listing = f"# from a pipeline\n{sample_media['coffee_no_face.jpg']}\n\n{sample_media['corrupt.jpg']}\n"
    result = runner.invoke(app, ["scan", "--from", "-", "--json", "-"], input=listing.encode())
    assert result.exit_code == 1  # the corrupt file
    files = json.loads(result.stdout)["files"]
    assert [(Path(f["path"]).name, f["verdict"]) for f in files] == [("coffee_no_face.jpg", "no-face"), ("corrupt.jpg", "error")]


def test_a_file_that_changes_while_it_is_scanned_is_an_error_not_a_verdict(sample_media, tmp_path):
    # Its SHA-256 was taken first: a verdict would pin a hash to content that was not analysed.
    import shutil

    from forensic.bundle import DEFAULT_BUNDLE, load_bundle
    from forensic.scan import Scanner

    video = tmp_path / "still_copying.mp4"
    shutil.copyfile(sample_media["astronaut_pan.mp4"], video)
    scanner = Scanner(load_bundle(DEFAULT_BUNDLE), device="cpu", frames=20)

    def grow(frames_done: int) -> None:
        with open(video, "ab") as handle:
            handle.write(b"\0")

    changed = scanner.scan_file(video, on_frames=grow)
    assert changed.verdict == "error" and changed.score is None
    assert changed.error.startswith(f"{video}: changed while it was being scanned")
    assert scanner.scan_file(video).verdict in ("real", "fake", "uncertain")  # left alone, it is scanned


def test_workers_give_the_same_report_in_the_same_order(sample_media, tmp_path):
    """--workers 2 scans in two processes; the report is the one a single process writes."""
    paths = [str(sample_media[name]) for name in ("astronaut.png", "coffee_no_face.jpg", "corrupt.jpg", "astronaut_pan.mp4")]
    reports = {}
    for workers in (1, 2):
        out = tmp_path / f"report{workers}.json"
        result = runner.invoke(app, ["scan", *paths, "--workers", str(workers), "--frames", "4", "--json", str(out)])
        assert result.exit_code == 1, result.output  # the corrupt file
        reports[workers] = json.loads(out.read_text())
    assert [f["path"] for f in reports[2]["files"]] == paths

    def comparable(report: dict) -> list[dict]:
        return [{k: v for k, v in f.items() if k != "timings"} for f in report["files"]]

    assert comparable(reports[2]) == comparable(reports[1])


def test_scan_batch_reports_each_file_and_stops_at_ctrl_c_with_the_rest_listed(sample_media):
    # The batch a pipeline can call without the CLI: files in order, each announced, Ctrl-C keeps what finished.
    from forensic.bundle import DEFAULT_BUNDLE, load_bundle
    from forensic.parallel import scan_batch
    from forensic.scan import Scanner

    settings = {"device": "cpu", "frames": 4}
    scanner = Scanner(load_bundle(DEFAULT_BUNDLE), **settings)
    paths = [sample_media[name] for name in ("astronaut.png", "astronaut_pan.mp4", "coffee_no_face.jpg")]
    started, frames, finished = [], [], []
    batch = scan_batch(paths, scanner, settings, on_file=started.append,
                       on_frames=lambda path, n: frames.append((path, n)), on_result=finished.append)
    assert started == paths and batch.not_scanned is None
    assert [r.path for r in batch.results] == [str(p) for p in paths] and finished == batch.results
    assert {path for path, _ in frames} >= {sample_media["astronaut_pan.mp4"]}  # the video's frames were reported

    def stop_at_the_video(path, n):
        if path.suffix == ".mp4":
            raise KeyboardInterrupt

    stopped = scan_batch(paths, scanner, settings, on_frames=stop_at_the_video)
    assert [r.path for r in stopped.results] == [str(paths[0])] and stopped.not_scanned == paths[1:]
    assert stopped.results[0].verdict == batch.results[0].verdict


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_writes_an_incomplete_report_of_the_files_finished_and_exits_130(sample_media, tmp_path, workers):
    # A real process and a real SIGINT (what Ctrl-C sends): the first file (sorted) is corrupt, so
    # its error line on stderr says the scan is under way; 160 photos after it are far from done (40
    # were not once MTCNN ran in ONNX Runtime: two workers finished them within the second below).
    folder = tmp_path / "inbox"
    folder.mkdir()
    shutil.copy(sample_media["corrupt.jpg"], folder / "000-corrupt.jpg")
    for n in range(160):
        shutil.copy(sample_media["astronaut.png"], folder / f"{n + 1:03d}.png")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    report_path, csv_path = tmp_path / "report.json", tmp_path / "report.csv"
    process = subprocess.Popen([sys.executable, "-m", "forensic", "scan", str(folder), "--json", str(report_path),
                                "--csv", str(csv_path), "--workers", workers],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # A shell that runs the tests in the background (`make test &`) starts them with
                               # SIGINT ignored, and an ignored signal stays ignored across exec: the scan would
                               # rightly ignore Ctrl-C. Start it as a terminal's foreground process is started.
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stderr_lines = []
    for line in process.stderr:
        stderr_lines.append(line)
        if line.startswith("error:"):
            break
    time.sleep(1.0)  # let a file or two more finish
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    stderr = "".join(stderr_lines) + rest
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted:" in stderr
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, report_schema())
    assert report["complete"] is False
    scanned = [Path(entry["path"]).name for entry in report["files"]]
    missing = [Path(path).name for path in report["not_scanned"]]
    assert scanned[0] == "000-corrupt.jpg" and report["files"][0]["verdict"] == "error"
    assert missing and sorted(scanned + missing) == sorted(before), "every input is accounted for, once"
    assert all(entry["verdict"] in ("real", "fake", "uncertain") for entry in report["files"][1:])
    assert len(list(csv.DictReader(open(csv_path)))) == len(scanned)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} == before


def test_a_complete_scan_says_so(sample_media, tmp_path):
    report_path = tmp_path / "r.json"
    result = runner.invoke(app, ["scan", str(sample_media["astronaut.png"]), "--json", str(report_path)])
    assert result.exit_code == 0
    report = json.loads(report_path.read_text())
    assert report["complete"] is True and report["not_scanned"] == []
