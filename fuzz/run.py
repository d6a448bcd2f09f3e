"""Fuzz forensic's image loading, video frame sampling and manifest loading with atheris
(libFuzzer, coverage-guided over forensic's and Pillow's Python code). The targets and the
property they check are in fuzz/harness.py.

    python fuzz/run.py --minutes 10                  # all targets, the time split between them
    python fuzz/run.py --minutes 5 --target video    # one target
    python fuzz/run.py --runs 400 --target image     # a fixed, seeded number of examples (the tests)
    python fuzz/run.py --replay FILE --target image  # run one saved input again, with its traceback

Each target runs in a child process (so that a hang, a native crash or running out of memory
is caught by libFuzzer and saved as a file, not lost with the run), seeded by the small valid
files the harness makes. A finding is saved to --out (default build/fuzz-findings) as a folder
holding the fuzzer's input (input.bin), the file it stands for (input.jpg, manifest.json...)
and finding.txt (what broke, the traceback, the command that replays it). With --minutes the
run goes on after a finding (later examples that break the same way are counted, not saved
again); with --runs it stops at the first. Exit status: 0 no finding, 1 findings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KINDS = ("crash", "timeout", "oom", "leak", "slow-unit")


def _child(target: str, workdir: Path, known_file: str | None, libfuzzer_args: list[str]) -> None:
    """Run libFuzzer on one target (does not return)."""
    import atheris

    sys.path.insert(0, str(HERE))
    with atheris.instrument_imports(include=["forensic", "PIL"]):
        import harness

    fuzz_target = harness.Target(target, workdir)
    known = set(json.loads(Path(known_file).read_text())) if known_file else set()

    def one_input(data: bytes) -> None:
        try:
            fuzz_target.check(data)
        except harness.Finding as finding:
            if finding.signature not in known:  # new: libFuzzer saves the input and the run stops
                raise

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def _replay(target: str, data_file: Path, out: Path) -> dict:
    """Run one input again in this process; save the reproducer folder. Returns what broke."""
    sys.path.insert(0, str(HERE))
    import harness

    data = data_file.read_bytes()
    with tempfile.TemporaryDirectory(prefix="forensic-fuzz-replay-") as workdir:
        fuzz_target = harness.Target(target, Path(workdir))
        name, content = fuzz_target.materialize(data)
        folder = out / f"{target}-{hashlib.sha1(data).hexdigest()[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "input.bin").write_bytes(data)
        (folder / name).write_bytes(content)
        command = f"{Path(sys.executable).name} fuzz/run.py --replay {folder / 'input.bin'} --target {target}"
        # Written before running it, so that a hang or a native crash still leaves the reproducer.
        (folder / "finding.txt").write_text(f"target: {target}\ncall: {fuzz_target.describe(data)} on {name}\n"
                                            f"replay: {command}\n", encoding="utf-8")
        try:
            fuzz_target.check(data)
        except harness.Finding as finding:
            with open(folder / "finding.txt", "a", encoding="utf-8") as handle:
                handle.write(f"\n{finding}\n")
            return {"signature": finding.signature, "folder": str(folder)}
    return {"signature": None, "folder": str(folder)}


def _examples(log: str) -> int:
    stat = re.findall(r"stat::number_of_executed_units: (\d+)", log)
    if stat:
        return int(stat[-1])
    pulses = re.findall(r"^#(\d+)\s", log, re.MULTILINE)
    return int(pulses[-1]) if pulses else 0


def _record(target: str, artifact: Path, log: str, out: Path, timeout: int) -> dict:
    """A new artifact: replay it (in a process of its own) for its reproducer folder and signature."""
    kind = next((k for k in KINDS if artifact.name.startswith(k + "-")), "crash")
    try:
        replay = subprocess.run([sys.executable, __file__, "--replay", str(artifact), "--target", target,
                                 "--out", str(out), "--json"], capture_output=True, text=True, timeout=timeout * 3 + 60)
        lines = replay.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if replay.returncode in (0, 1) and lines else None
    except subprocess.TimeoutExpired:
        result = None
    if result is None or result["signature"] is None:
        folder = out / f"{target}-{hashlib.sha1(artifact.read_bytes()).hexdigest()[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "input.bin").exists():
            (folder / "input.bin").write_bytes(artifact.read_bytes())
        detail = re.findall(r"(?:ALARM|==\d+== ERROR|SUMMARY|MS:).*", log)
        with open(folder / "finding.txt", "a", encoding="utf-8") as handle:
            handle.write(f"\nlibFuzzer ({kind}), not reproduced as a Python finding by the replay:\n"
                         + "\n".join(detail[-6:]) + "\n\n" + log[-6000:])
        result = {"signature": f"{target}: {kind} (libFuzzer)", "folder": str(folder)}
    return result


def fuzz(targets: list[str], minutes: float | None, runs: int | None, out: Path, seed: int, timeout: int) -> int:
    sys.path.insert(0, str(HERE))
    import harness

    out = out.resolve()
    workroot = Path(tempfile.mkdtemp(prefix="forensic-fuzz-"))
    total, findings = 0, []
    started = time.monotonic()
    for position, target in enumerate(targets):
        base = workroot / target
        corpus, seeds, artifacts = base / "corpus", base / "seeds", base / "artifacts"
        for folder in (corpus, seeds, artifacts):
            folder.mkdir(parents=True)
        fuzz_target = harness.Target(target, base / "work")  # the sandbox a child reuses
        for name, data in fuzz_target.seeds().items():
            (seeds / name).write_bytes(data)
        dictionary = harness.write_dictionary(target, base / "tokens.dict")
        known_file = base / "known.json"
        known: list[str] = []
        known_file.write_text("[]")
        deadline = None
        if minutes is not None:  # what is left, shared by the targets still to run
            deadline = time.monotonic() + (minutes * 60 - (time.monotonic() - started)) / (len(targets) - position)
        examples, restarts = 0, 0
        while True:
            remaining = None if deadline is None else int(deadline - time.monotonic())
            if remaining is not None and remaining < 5:
                break
            args = [str(corpus), str(seeds), f"-seed={seed + restarts}", f"-timeout={timeout}", "-rss_limit_mb=2048",
                    f"-artifact_prefix={artifacts}/", "-print_final_stats=1", f"-dict={dictionary}", "-max_len=65536",
                    f"-max_total_time={remaining}" if remaining is not None else f"-runs={runs}"]
            log_file = base / f"child-{restarts}.log"
            before = set(artifacts.iterdir())
            with open(log_file, "w") as log:
                env = {**os.environ, "PYTHONHASHSEED": "0"}
                child = subprocess.run([sys.executable, __file__, "--child", target, "--workdir", str(base / "work"),
                                        "--known", str(known_file), "--", *args],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=base / "work", env=env)
            log_text = log_file.read_text(errors="replace")
            examples += _examples(log_text)
            new = sorted(set(artifacts.iterdir()) - before)
            if child.returncode != 0 and not new:
                print(f"{target}: the fuzzer exited with status {child.returncode} and saved no input:\n{log_text[-3000:]}")
                findings.append({"signature": f"{target}: fuzzer exited {child.returncode}", "folder": str(log_file)})
                break
            for artifact in new:
                finding = _record(target, artifact, log_text, out, timeout)
                findings.append(finding)
                print(f"FINDING {finding['signature']}\n  reproducer: {finding['folder']}", flush=True)
                if finding["signature"] not in known:
                    known.append(finding["signature"])
                    known_file.write_text(json.dumps(known))
            if not new or runs is not None or restarts >= 20:
                break
            restarts += 1
        try:
            fuzz_target.verify_intact()
        except harness.Finding as finding:
            findings.append({"signature": finding.signature, "folder": str(base)})
            print(f"FINDING {finding}")
        total += examples
        print(f"{target}: {examples} examples, {sum(f['signature'].startswith(target) for f in findings)} findings",
              flush=True)
    elapsed = time.monotonic() - started
    print(f"total: {total} examples in {elapsed:.0f} s, {len(findings)} findings"
          + (f" (reproducers in {out})" if findings else ""))
    for finding in findings:
        print(f"  {finding['signature']}: {finding['folder']}")
    if not findings:
        import shutil

        shutil.rmtree(workroot, ignore_errors=True)
    else:
        print(f"the fuzzers' logs and corpora: {workroot}")
    return 1 if findings else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        split = argv.index("--")
        options = dict(zip(argv[:split:2], argv[1:split:2]))
        _child(options["--child"], Path(options["--workdir"]), options.get("--known"), argv[split + 1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, help="fuzz for this long in all (the targets share it)")
    parser.add_argument("--runs", type=int, help="instead: this many examples per target, stopping at a finding")
    parser.add_argument("--target", action="append", choices=("image", "video", "manifest"),
                        help="a target (repeatable; default all)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz-findings", help="where reproducers go")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's seed (the same seed, the same examples)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one example may take before it is a hang")
    parser.add_argument("--replay", type=Path, help="run this saved input of --target once and report")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    targets = options.target or ["image", "video", "manifest"]
    if options.replay:
        if len(targets) != 1:
            parser.error("--replay needs one --target")
        result = _replay(targets[0], options.replay, options.out.resolve())
        if options.json:
            print(json.dumps(result))
        else:
            print((Path(result["folder"]) / "finding.txt").read_text(encoding="utf-8"))
            print("no finding: the property holds for this input" if result["signature"] is None else "")
        return 0 if result["signature"] is None else 1
    if (options.minutes is None) == (options.runs is None):
        parser.error("give --minutes or --runs")
    return fuzz(targets, options.minutes, options.runs, options.out, options.seed, options.timeout)


if __name__ == "__main__":
    sys.exit(main())
