"""Everything known about one file: verdict against the threshold, hashes, per-model votes,
identities, self-test, the score timeline, each identity's face and heatmap, and errors."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Label, Static

from forensic.bundle import Bundle
from forensic.display import VERDICT_STYLE, printable
from forensic.heatmaps import combine, overlay
from forensic.scan import FileResult, deciding_identities, identity_face_keys, verdict_for, why_not_deciding
from forensic.tui.state import FileRecord, format_epsilon, format_size
from forensic.tui.widgets.face_image import face_image
from forensic.tui.widgets.timeline import ScoreTimeline


def verdict_line(result: FileResult, uncertain_band: float) -> Text:
    line = Text()
    line.append(f" {result.verdict.upper()} ", style=f"reverse {VERDICT_STYLE[result.verdict]}")
    if result.score is None:
        reason = ("the file could not be analysed" if result.verdict == "error"
                  else "no face in any analysed frame: no verdict is guessed")
        return line.append(f"  {reason}")
    relation = "≥" if result.score >= result.threshold else "<"
    line.append(f"  score {result.score:.4f} {relation} threshold {result.threshold:.4f}")
    if uncertain_band:
        line.append(f" (uncertain within ±{uncertain_band:g})", style="dim")
    return line


def facts_table(record: FileRecord, bundle: Bundle) -> Table:
    result = record.result
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")
    facts.add_row("path", Text(printable(str(record.path))))  # names and paths are data, never markup
    scanned = f"{result.frames_analyzed} frame(s) analysed, {result.faces} face(s)"
    facts.add_row("file", f"{record.kind or 'unsupported type'}, {format_size(record.size)}; {scanned}; "
                          f"{'from the cache' if record.status == 'cached' else 'scanned now'}")
    facts.add_row("SHA-256", result.sha256 or "– (not read)")
    facts.add_row("bundle", Text(f"{printable(bundle.name)} ({bundle.sha256[:12]})"))
    return facts


def votes_table(result: FileResult, bundle: Bundle) -> Table | None:
    """Each model's own score for the file (its score of the deciding identities, combined as
    the file's score is) and the verdict that score alone would give."""
    deciding = deciding_identities(result.identities)
    if not deciding:
        return None
    table = Table(title="per-model votes", title_justify="left", box=None, padding=(0, 2))
    for header, justify in (("model", "left"), ("weight", "right"), ("score", "right"), ("vote", "left")):
        table.add_column(header, justify=justify)
    total = sum(model.weight for model in bundle.models)
    for model in bundle.models:
        score = max(identity.model_scores[model.name] for identity in deciding)
        vote = verdict_for(score, result.threshold, bundle.uncertain_band)
        table.add_row(Text(printable(model.name)), f"{model.weight / total:.2f}", f"{score:.4f}", Text(vote, style=VERDICT_STYLE[vote]))
    return table


def identities_table(result: FileResult) -> Table | None:
    if not result.identities:
        return None
    table = Table(title="identities (faces tracked across frames)", title_justify="left", box=None, padding=(0, 2))
    for header, justify in (("#", "right"), ("frames", "right"), ("score", "right"), ("decides", "left"),
                            ("most fake at", "left")):
        table.add_column(header, justify=justify)
    for identity in result.identities:
        when = (f"{identity.most_fake_time:.2f} s" if identity.most_fake_time is not None
                else f"frame {identity.most_fake_frame}")
        table.add_row(str(identity.identity), str(identity.frames), f"{identity.score:.4f}",
                      "yes" if identity.counts else f"no ({why_not_deciding(identity)})", when)
    return table


def self_test_renderable(self_test: dict | None, verdict: str) -> Group | Text:
    if self_test is None:
        if verdict in ("no-face", "error"):
            return Text("self-test: nothing to attack (no verdict)", style="dim")
        return Text("self-test: not run; press s to attack this verdict", style="dim")
    if self_test["fragility"] is None:
        outcome = f"no flip up to ε = {format_epsilon(max(t['epsilon'] for t in self_test['trials']))}"
    else:
        outcome = f"flips at ε = {format_epsilon(self_test['fragility'])}" + (" (fragile)" if self_test["fragile"] else "")
    summary = Text(f"self-test: {self_test['attack'].upper()}, {self_test['steps']} steps on "
                   f"{self_test['faces_attacked']} face(s): {outcome}")
    if self_test.get("fallback_reason"):
        summary.append(f"\n{self_test['fallback_reason']}", style="dim")
    table = Table(box=None, padding=(0, 2))
    for header in ("ε", "score", "flipped", "max |δ|"):
        table.add_column(header, justify="right")
    for trial in self_test["trials"]:
        table.add_row(format_epsilon(trial["epsilon"]), f"{trial['score']:.4f}", "yes" if trial["flipped"] else "no",
                      f"{trial['max_perturbation']:.4f}")
    return Group(summary, table)


class DetailPane(VerticalScroll):
    """Shows one FileRecord; `show` redraws it (after a rescan or self-test, say)."""

    DEFAULT_CSS = """
    DetailPane { padding: 0 1; }
    DetailPane > Static { margin-bottom: 1; }
    DetailPane #title { text-style: bold; }
    DetailPane .faces { height: auto; }
    DetailPane .face { width: auto; height: auto; margin-right: 2; }
    DetailPane .thumbnail { width: 20; height: 10; }
    """

    def __init__(self, record: FileRecord, bundle: Bundle) -> None:
        super().__init__()
        self.record = record
        self.bundle = bundle

    def show(self, record: FileRecord) -> None:
        self.record = record
        self.refresh(recompose=True)

    def compose(self) -> ComposeResult:
        record, result = self.record, self.record.result
        yield Static(Text(record.name), id="title")
        if not record.finished:
            frames = f" ({record.frames_done} frames analysed so far)" if record.frames_done else ""
            yield Static(Text(f"{record.status}{frames}: " + ("no result yet" if result is None else
                                                              "the result below is being replaced"), style="bold"))
        if result is None:
            return
        yield Static(verdict_line(result, self.bundle.uncertain_band))
        yield Static(facts_table(record, self.bundle))
        if result.error:
            yield Static(Text(f"error: {printable(result.error)}", style="bold magenta"))
        for table in (votes_table(result, self.bundle), identities_table(result)):
            if table is not None:
                yield Static(table)
        yield Static(self_test_renderable(result.self_test, result.verdict))
        if len(result.frames) > 1 and result.identities:
            yield Label("score per analysed frame (red: threshold; orange: uncertain band)")
            yield ScoreTimeline(result, result.threshold, self.bundle.uncertain_band)
        yield from self._faces(result)

    def _faces(self, result: FileResult) -> ComposeResult:
        keys = identity_face_keys(result)
        shown = [(identity, keys[identity]) for identity in sorted(keys) if keys[identity] in result.crops]
        if not shown:
            return
        yield Label("each identity's most fake face, and where the models saw 'fake' (red)")
        weights = {model.name: model.weight for model in self.bundle.models}
        with Horizontal(classes="faces"):
            for identity, key in shown:
                crop, cams = result.crops[key]
                with Vertical(classes="face"):
                    yield Label(f"#{identity}")
                    yield face_image(crop, classes="thumbnail")
                if cams:
                    with Vertical(classes="face"):
                        yield Label(f"#{identity} heatmap")
                        yield face_image(overlay(crop, combine(cams, weights, crop.shape[0])), classes="thumbnail")
