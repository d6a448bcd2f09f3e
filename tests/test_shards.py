"""forensic scan --shard I/N and forensic merge: real scans of real media with the default bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from forensic.cli import app
from forensic.inputs import collect_keyed_inputs
from forensic.report import report_schema
from forensic.scan import FileResult
from forensic.shards import Shard, parse_shard, select_shard, shard_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
SHARDS = 3
FRAMES = "2"


@pytest.fixture(scope="module")
def scans(sample_media, tmp_path_factory, one_torch_thread) -> dict:
    """One full scan of an archive folder and a file named after it, and its three shard scans
    (and one with other settings), run from the folder that holds them (relative paths)."""
    work = tmp_path_factory.mktemp("shards")
    archive = work / "archive"
    for name, inside in (("astronaut.png", "photos"), ("coffee_no_face.jpg", "photos"),
                         ("astronaut_pan.mp4", "clips"), ("corrupt.jpg", ".")):
        (archive / inside).mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_media[name], archive / inside / name)
    # Named after the folder but sorted before it: the merged order is the listing's, not the paths'.
    shutil.copy(sample_media["astronaut_blended.jpg"], work / "0-blended.jpg")
    inputs = ["archive", "0-blended.jpg"]
    hashed: dict[int, list[str]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        import forensic.scan

        real_sha256 = forensic.scan.sha256_file
        opened: list[str] = []
        patch.setattr(forensic.scan, "sha256_file", lambda path, *rest: opened.append(str(path)) or real_sha256(path, *rest))
        full = runner.invoke(app, ["scan", *inputs, "--frames", FRAMES, "--json", "full.json", "--csv", "full.csv"])
        assert full.exit_code == 1, full.output  # corrupt.jpg
        codes = {}
        for index in range(SHARDS):
            opened.clear()
            result = runner.invoke(app, ["scan", *inputs, "--frames", FRAMES, "--shard", f"{index}/{SHARDS}",
                                         "--json", f"out/shard-{index}.json"])
            codes[index] = result.exit_code
            hashed[index] = list(opened)
        other = runner.invoke(app, ["scan", *inputs, "--frames", "3", "--shard", f"2/{SHARDS}", "--json", "frames3.json"])
        assert other.exit_code in (0, 1), other.output
    return {"work": work, "inputs": inputs, "codes": codes, "hashed": hashed,
            "shards": [work / "out" / f"shard-{index}.json" for index in range(SHARDS)]}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _comparable(report: dict) -> dict:
    """A report less what differs from run to run: `created`, each file's `timings` and, in a
    merged report, `merged_from` (the shard reports' own paths and times)."""
    kept = {key: value for key, value in report.items() if key not in ("created", "merged_from")}
    kept["files"] = [{key: value for key, value in entry.items() if key != "timings"} for entry in report["files"]]
    return kept


def _one_line_usage_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


def test_three_shards_merge_into_the_report_of_one_full_scan(scans, monkeypatch):
    monkeypatch.chdir(scans["work"])
    full = _load(scans["work"] / "full.json")
    shards = [_load(path) for path in scans["shards"]]
    for index, shard in enumerate(shards):
        jsonschema.validate(shard, report_schema())
        assert shard["shard"]["index"] == index and shard["shard"]["count"] == SHARDS
        assert shard["shard"]["inputs"] == len(full["files"])
        # a shard's exit status is its own files'
        assert scans["codes"][index] == (1 if any(f["verdict"] == "error" for f in shard["files"]) else 0)
    assert full["shard"] is None and full["merged_from"] is None
    assert all(shard["files"] for shard in shards), "these names spread over all three shards"
    assert all(shard["face_detector"] == full["face_detector"] for shard in shards)

    # in any order, and the CSV and HTML writers are the scan's
    given = [str(path.relative_to(scans["work"])) for path in reversed(scans["shards"])]
    result = runner.invoke(app, ["merge", *given, "--json", "merged.json", "--csv", "merged.csv", "--html", "html"])
    assert result.exit_code == 1, result.output  # corrupt.jpg, as the full scan
    merged = _load(scans["work"] / "merged.json")
    jsonschema.validate(merged, report_schema())
    assert _comparable(merged) == _comparable(full)
    assert [f["path"] for f in merged["files"]][-1] == "0-blended.jpg"  # the listing's order
    assert merged["shard"] is None and merged["complete"] is True and merged["not_scanned"] == []
    assert [(m["index"], m["count"], m["report"]) for m in merged["merged_from"]] == \
        [(index, SHARDS, f"out/shard-{index}.json") for index in range(SHARDS)]
    assert (scans["work"] / "merged.csv").read_bytes() == (scans["work"] / "full.csv").read_bytes()
    page = (scans["work"] / "html" / "index.html").read_text()
    assert all(f["path"] in page for f in full["files"])
    assert all(f"{network['name']} sha256 {network['sha256']}" in page for network in full["face_detector"]["networks"])

    # --fail-on-fake as scan's, and --json - writes only the report to stdout
    piped = runner.invoke(app, ["merge", *given, "--json", "-", "--fail-on-fake"])
    verdicts = [f["verdict"] for f in full["files"]]
    assert piped.exit_code == (3 if "fake" in verdicts else 1)
    assert _comparable(json.loads(piped.stdout)) == _comparable(full)


def test_every_file_is_in_exactly_one_shard_and_no_other_file_is_opened(scans):
    full = [f["path"] for f in _load(scans["work"] / "full.json")["files"]]
    per_shard = [[f["path"] for f in _load(path)["files"]] for path in scans["shards"]]
    assert sorted(path for paths in per_shard for path in paths) == sorted(full)
    for index, paths in enumerate(per_shard):
        assert set(paths).isdisjoint(set(full) - set(paths))
        assert scans["hashed"][index] == paths, "only the shard's own files are hashed (and so opened)"
        for path in paths:
            key = path if path == "0-blended.jpg" else str(Path(path).relative_to("archive"))
            assert shard_of(key, SHARDS) == index


def test_shard_assignment_does_not_depend_on_listing_order_or_where_the_folder_is(tmp_path):
    names = [f"d{n % 4}/e{n % 3}/clip{n}.mp4" for n in range(40)] + [f"photo{n}.jpg" for n in range(20)]
    for root in (tmp_path / "mnt" / "a", tmp_path / "elsewhere"):
        for name in names:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"")  # never opened
    (tmp_path / "loose.png").write_bytes(b"")

    def membership(roots: list[Path], count: int) -> dict[str, int]:
        """Each file's key: its shard, checking that each file is in one shard."""
        listing = collect_keyed_inputs(roots)
        key_of = dict(listing)
        shards: dict[str, int] = {}
        for index in range(count):
            for path in select_shard(listing, Shard(index, count)).paths:
                assert key_of[path] not in shards, f"{path} in two shards"
                shards[key_of[path]] = index
        assert len(shards) == len(listing), "every file in a shard"
        return shards

    forward = membership([tmp_path / "mnt" / "a", tmp_path / "loose.png"], 7)
    assert set(forward) == set(names) | {str(tmp_path / "loose.png")}  # keys: paths inside the folder, or as given
    assert membership([tmp_path / "loose.png", tmp_path / "mnt" / "a"], 7) == forward  # listed in another order
    assert membership([tmp_path / "elsewhere", tmp_path / "loose.png"], 7) == forward  # the folder elsewhere
    listing = collect_keyed_inputs([tmp_path / "mnt" / "a"])
    for index in range(7):
        assert set(select_shard(listing, Shard(index, 7)).paths) == set(select_shard(listing[::-1], Shard(index, 7)).paths)
    assert len(set(forward.values())) == 7  # 61 names spread over all 7


def test_a_shard_records_where_its_files_and_unscanned_inputs_stand(tmp_path):
    listing = [(tmp_path / f"{n}.jpg", f"{n}.jpg") for n in range(12)]
    selection = select_shard(listing, Shard(1, 2))
    first, *rest = selection.paths
    done = FileResult(path=str(first), kind="image", sha256=None, verdict="error", score=None, threshold=0.5)
    record = selection.record([done], rest)
    assert record["file_positions"] == selection.positions[:1] and record["not_scanned_positions"] == selection.positions[1:]
    assert record["inputs"] == 12 and [listing[at][0] for at in selection.positions] == selection.paths


@pytest.mark.parametrize("value", ["3/2", "-1/2", "x/y", "0/0", "1", "1/2/3", "2/2", ""])
def test_bad_shard_values_are_one_line_usage_errors(value, tmp_path):
    with pytest.raises(Exception, match="--shard must be I/N"):
        parse_shard(value)
    _one_line_usage_error(runner.invoke(app, ["scan", str(tmp_path), f"--shard={value}"]), "--shard must be I/N")
    if value == "-1/2":  # also as the option's next argument
        _one_line_usage_error(runner.invoke(app, ["scan", str(tmp_path), "--shard", value]), "--shard must be I/N")


def test_merge_refuses_reports_that_are_not_the_shards_of_one_scan(scans, tmp_path, monkeypatch):
    monkeypatch.chdir(scans["work"])
    paths = [str(path.relative_to(scans["work"])) for path in scans["shards"]]
    reports = [_load(path) for path in scans["shards"]]

    def edited(name: str, index: int, change) -> str:
        report = json.loads(json.dumps(reports[index]))
        change(report)
        (tmp_path / name).write_text(json.dumps(report))
        return str(tmp_path / name)

    other_bundle = edited("bundle.json", 2, lambda r: r["bundle"].update(sha256="0" * 64))
    _one_line_usage_error(runner.invoke(app, ["merge", *paths[:2], other_bundle, "--json", str(tmp_path / "m.json")]),
                          f"{other_bundle}: scanned with another bundle than {paths[0]} (sha256 000000000000… vs "
                          f"{reports[0]['bundle']['sha256'][:12]}…)\n")
    # a face detector that differs is named by the fields that differ, never printed whole
    pnet = reports[0]["face_detector"]["networks"][0]
    other_detector = edited("detector.json", 2, lambda r: r["face_detector"]["networks"][0].update(sha256="0" * 64))
    _one_line_usage_error(runner.invoke(app, ["merge", *paths[:2], other_detector]),
                          f"{other_detector}: scanned with another face detector than {paths[0]} "
                          f"(pnet sha256 000000000000… vs {pnet['sha256'][:12]}…)\n")
    weights = reports[0]["face_detector"]["weights"]
    other_weights = edited("weights.json", 2, lambda r: r["face_detector"].update(weights="retrained"))
    _one_line_usage_error(runner.invoke(app, ["merge", *paths[:2], other_weights]),
                          f"{other_weights}: scanned with another face detector than {paths[0]} "
                          f"(weights 'retrained' vs {weights!r})\n")
    unrecorded = edited("unrecorded.json", 2, lambda r: r.pop("face_detector"))  # made before it was recorded
    _one_line_usage_error(runner.invoke(app, ["merge", *paths[:2], unrecorded]),
                          f"{unrecorded}: scanned with another face detector than {paths[0]} "
                          f"(it has no face_detector record)\n")
    _one_line_usage_error(runner.invoke(app, ["merge", unrecorded, *paths[:2]]),
                          f"{paths[0]}: scanned with another face detector than {unrecorded} "
                          f"({unrecorded} has no face_detector record)\n")
    garbled = edited("garbled.json", 2, lambda r: r["face_detector"].update(networks=[pnet["sha256"]]))
    _one_line_usage_error(runner.invoke(app, ["merge", *paths[:2], garbled]),
                          f"{garbled}: not a well-formed shard report (face_detector is not "
                          "{name, weights, networks: [{name, sha256}]})")
    # a real scan of shard 2 with --frames 3
    _one_line_usage_error(runner.invoke(app, ["merge", *paths[:2], "frames3.json", "--json", str(tmp_path / "m.json")]),
                          f"frames3.json: scanned with other settings than {paths[0]} (frames_per_video 3 vs 2)")
    newer = edited("v2.json", 2, lambda r: r.update(schema_version=2))
    _one_line_usage_error(runner.invoke(app, ["merge", *paths[:2], newer]), f"{newer}: report schema version 2")
    shutil.copy(paths[1], tmp_path / "again.json")
    _one_line_usage_error(runner.invoke(app, ["merge", *paths, str(tmp_path / "again.json")]),
                          f"{tmp_path / 'again.json'}: shard 1/3 again (also {paths[1]})")

    def steal(report: dict) -> None:  # shard 2 also claims shard 0's first file
        report["files"].append(reports[0]["files"][0])
        report["shard"]["file_positions"].append(reports[0]["shard"]["file_positions"][0])
    overlapping = edited("overlap.json", 2, steal)
    _one_line_usage_error(runner.invoke(app, ["merge", *paths[:2], overlapping]),
                          f"{overlapping}: {reports[0]['files'][0]['path']} is also in {paths[0]}: the reports overlap")
    _one_line_usage_error(runner.invoke(app, ["merge", paths[0], paths[2], "--json", str(tmp_path / "m.json")]),
                          "shard 1 of 3 missing", "--allow-missing")
    _one_line_usage_error(runner.invoke(app, ["merge", *paths, "full.json"]),
                          "full.json: not a shard report (scanned without --shard)")
    (tmp_path / "junk.json").write_text("{not json")
    _one_line_usage_error(runner.invoke(app, ["merge", *paths, str(tmp_path / "junk.json")]),
                          f"{tmp_path / 'junk.json'}: not a JSON report")
    cut = edited("cut.json", 2, lambda r: r["shard"]["file_positions"].pop())
    _one_line_usage_error(runner.invoke(app, ["merge", *paths[:2], cut]),
                          f"{cut}: not a well-formed shard report (shard file_positions does not match files)")
    odd = edited("odd.json", 2, lambda r: r["files"][0].update(verdict="maybe"))
    _one_line_usage_error(runner.invoke(app, ["merge", *paths[:2], odd]),
                          f"{odd}: not a well-formed shard report ({reports[2]['files'][0]['path']}: verdict 'maybe'")
    _one_line_usage_error(runner.invoke(app, ["merge", *paths, "--json", paths[0]]),
                          f"{paths[0]}: is one of the inputs")
    assert not (tmp_path / "m.json").exists()
    assert [_load(path) for path in scans["shards"]] == reports  # inputs untouched


def test_shards_made_before_the_face_detector_was_recorded_still_merge(scans, tmp_path, monkeypatch):
    monkeypatch.chdir(scans["work"])
    given = []
    for index, path in enumerate(scans["shards"]):
        report = _load(path)
        del report["face_detector"]
        given.append(tmp_path / f"unrecorded-{index}.json")
        given[-1].write_text(json.dumps(report))
    result = runner.invoke(app, ["merge", *map(str, given), "--json", str(tmp_path / "merged.json"),
                                 "--html", str(tmp_path / "html")])
    assert result.exit_code == 1, result.output  # corrupt.jpg
    merged, full = _load(tmp_path / "merged.json"), _load(scans["work"] / "full.json")
    jsonschema.validate(merged, report_schema())
    del full["face_detector"]
    assert _comparable(merged) == _comparable(full)
    assert "<th>face detector</th>" not in (tmp_path / "html" / "index.html").read_text()


def test_missing_and_interrupted_shards_merge_only_when_said_and_are_marked_incomplete(scans, tmp_path, monkeypatch):
    monkeypatch.chdir(scans["work"])
    paths = [str(path.relative_to(scans["work"])) for path in scans["shards"]]
    full = _load(Path("full.json"))
    result = runner.invoke(app, ["merge", paths[0], paths[2], "--allow-missing", "--json", str(tmp_path / "two.json")])
    assert result.exit_code == 1, result.output
    assert "incomplete: no report for shard(s) 1 of 3" in result.output
    two = _load(tmp_path / "two.json")
    jsonschema.validate(two, report_schema())
    assert two["complete"] is False and [m["index"] for m in two["merged_from"]] == [0, 2]
    missing = {f["path"] for f in _load(scans["shards"][1])["files"]}
    assert [f["path"] for f in two["files"]] == [f["path"] for f in full["files"] if f["path"] not in missing]

    # A shard stopped by Ctrl-C: its report lists what it did not scan, and so does the merge.
    shard = _load(scans["shards"][0])
    shard["complete"] = False
    shard["not_scanned"] = [shard["files"].pop()["path"]]
    shard["shard"]["not_scanned_positions"] = [shard["shard"]["file_positions"].pop()]
    (tmp_path / "stopped.json").write_text(json.dumps(shard))
    result = runner.invoke(app, ["merge", str(tmp_path / "stopped.json"), *paths[1:], "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 1 and "1 inputs were not scanned" in result.output, result.output
    merged = _load(tmp_path / "m.json")
    assert merged["complete"] is False and merged["not_scanned"] == shard["not_scanned"]
    assert sorted([f["path"] for f in merged["files"]] + merged["not_scanned"]) == sorted(f["path"] for f in full["files"])


def test_an_empty_shard_is_a_report_of_no_files_and_merges(sample_media, tmp_path, monkeypatch):
    # More shards than files (a job array wider than the folder): each task still succeeds.
    monkeypatch.chdir(sample_media["coffee_no_face.jpg"].parent)
    name = "coffee_no_face.jpg"
    out = [tmp_path / f"shard-{index}.json" for index in range(2)]
    for index in range(2):
        result = runner.invoke(app, ["scan", name, "--shard", f"{index}/2", "--json", str(out[index]), "--quiet"])
        assert result.exit_code == 0, result.output
    assert [len(_load(path)["files"]) for path in out] == [int(shard_of(name, 2) == index) for index in range(2)]
    merged = runner.invoke(app, ["merge", *map(str, out), "--json", "-", "--quiet"])
    assert merged.exit_code == 0, merged.output
    assert [f["path"] for f in json.loads(merged.stdout)["files"]] == [name]
