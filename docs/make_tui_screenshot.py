"""Redraw docs/tui.svg, the README's picture of `forensic tui`: trainer synth's sample media
(what `trainer synth --media DIR` writes) scanned with the default bundle in an 80×24 terminal,
the top file self-tested (`s`), as `forensic tui DIR` shows them.

    .venv/bin/python docs/make_tui_screenshot.py [--bundle exports/default] [--out docs/tui.svg]

Run it again whenever the default bundle or the UI changes. The media and the results cache go
to a temporary folder (every status reads "done", none "cached"); the scan runs on the CPU, so
that the picture does not depend on the machine's GPU. It takes under a minute on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from forensic.bundle import DEFAULT_BUNDLE, load_bundle
from forensic.inputs import collect_inputs
from forensic.tui.app import ForensicApp
from forensic.tui.jobs import ScanSettings
from trainer.data.synthetic import make_sample_media

SIZE = (80, 24)
GIVE_UP_SECONDS = 1800


async def wait_for(pilot, condition, what: str) -> None:
    for _ in range(int(GIVE_UP_SECONDS / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise SystemExit(f"gave up waiting for {what}")


async def screenshot(bundle: Path, out: Path, work: Path) -> None:
    folder = work / "media"
    make_sample_media(folder)
    app = ForensicApp(folder, collect_inputs([folder]), ScanSettings(load_bundle(bundle), device="cpu"), work / "cache")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.scan_finished, "the scan")
        top = app.records[app.table.highlighted_key]  # the cursor is on the top row until moved
        await pilot.press("s")
        await wait_for(pilot, lambda: top.finished and top.self_test is not None, f"the self-test of {top.name}")
        await pilot.pause()
        app.save_screenshot(out.name, str(out.parent))
    print(f"{out}: {len(app.records)} files, the top one ({top.name}) self-tested")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "tui.svg")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        asyncio.run(screenshot(args.bundle, args.out.resolve(), Path(work)))


if __name__ == "__main__":
    main()
