"""A self-contained HTML report (one file; images embedded) of a scan: per file its verdict
against the threshold, hashes, identities with their most fake face and heatmap, and a score
timeline; the bundle, settings and versions at the top."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from forensic.heatmaps import combine, overlay
from forensic.outputs import atomic_write_text
from forensic.scan import FileResult, identity_face_keys, why_not_deciding

COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
VERDICT_COLOURS = {"fake": "#c62828", "real": "#2e7d32", "uncertain": "#ef6c00", "no-face": "#757575", "error": "#6a1b9a"}

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:2em;word-break:break-all}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
.verdict{color:#fff;padding:2px 8px;border-radius:4px;font-weight:bold}
code{font-size:.85em;word-break:break-all} .faces img{width:128px;height:128px;margin-right:4px}
"""


def _png_data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def timeline_svg(result: FileResult, threshold: float, band: float, width: int = 640, height: int = 180) -> str:
    """Each identity's face score per analysed frame, against the threshold (and its band)."""
    frames = result.frames
    if len(frames) < 2:
        return ""
    use_time = all(frame.time is not None for frame in frames)
    xs = [frame.time if use_time else frame.index for frame in frames]
    x0, x1 = min(xs), max(xs) or 1
    pad = 30

    def px(x: float) -> float:
        return pad + (x - x0) / ((x1 - x0) or 1) * (width - 2 * pad)

    def py(score: float) -> float:
        return height - pad - score * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<rect x="{pad}" y="{py(1)}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="#fafafa" stroke="#ccc"/>']
    if band > 0:
        parts.append(f'<rect x="{pad}" y="{py(min(1, threshold + band))}" width="{width - 2 * pad}" '
                     f'height="{py(max(0, threshold - band)) - py(min(1, threshold + band))}" fill="#ffe0b2"/>')
    parts.append(f'<line x1="{pad}" x2="{width - pad}" y1="{py(threshold)}" y2="{py(threshold)}" stroke="#c62828" stroke-dasharray="4"/>')
    parts.append(f'<text x="{width - pad + 2}" y="{py(threshold) + 4}" font-size="10">t</text>')
    for label, value in (("1", 1.0), ("0", 0.0)):
        parts.append(f'<text x="{pad - 12}" y="{py(value) + 4}" font-size="10">{label}</text>')
    parts.append(f'<text x="{pad}" y="{height - 8}" font-size="10">{"seconds" if use_time else "frame"} {x0:g}</text>')
    parts.append(f'<text x="{width - pad - 40}" y="{height - 8}" font-size="10">{x1:g}</text>')
    for identity in result.identities:
        points = [(px(x), py(face.score)) for x, frame in zip(xs, frames) for face in frame.faces
                  if face.identity == identity.identity]
        colour = COLOURS[identity.identity % len(COLOURS)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
        parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}"/>' for x, y in points)
    parts.append("</svg>")
    return "".join(parts)


def _identity_rows(result: FileResult, weights: dict[str, float]) -> str:
    rows = []
    most_fake_faces = identity_face_keys(result)
    for identity in result.identities:
        images = ""
        if most_fake_faces.get(identity.identity) in result.crops:
            crop, cams = result.crops[most_fake_faces[identity.identity]]
            images = f'<img alt="face" src="{_png_data_uri(crop)}">'
            if cams:
                cam = combine(cams, {name: weights[name] for name in cams}, crop.shape[0])
                images += f'<img alt="heatmap" src="{_png_data_uri(overlay(crop, cam))}">'
        when = f"{identity.most_fake_time:.2f} s" if identity.most_fake_time is not None else f"frame {identity.most_fake_frame}"
        models = ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in identity.model_scores.items())
        colour = COLOURS[identity.identity % len(COLOURS)]
        rows.append(f'<tr><td style="color:{colour}">#{identity.identity}</td><td>{identity.score:.4f}</td>'
                    f'<td>{identity.frames}{_not_deciding_note(identity)}</td>'
                    f'<td>{when}</td><td>{models}</td><td class="faces">{images}</td></tr>')
    if not rows:
        return ""
    return ("<table><tr><th>identity</th><th>score</th><th>frames</th><th>most fake at</th>"
            "<th>per model</th><th>most fake face, heatmap</th></tr>" + "".join(rows) + "</table>")


def _face_detector_row(detector: dict | None) -> str:
    """The face detector's name, weights and each network's SHA-256 (none in a report made
    before forensic recorded it, or merged from such shards)."""
    if not detector:
        return ""
    hashes = "".join(f"<br><code>{html.escape(network['name'])} sha256 {html.escape(network['sha256'])}</code>"
                     for network in detector["networks"])
    return (f"<tr><th>face detector</th><td>{html.escape(detector['name'])}, "
            f"{html.escape(detector['weights'])}{hashes}</td></tr>")


def render(report: dict, results: list[FileResult], weights: dict[str, float]) -> str:
    settings = report["settings"]
    threshold, band = settings["threshold"], settings["uncertain_band"]
    head = (f"<h1>forensic scan report</h1><table>"
            f"<tr><th>created</th><td>{html.escape(report['created'])}</td></tr>"
            f"<tr><th>tool</th><td>forensic {html.escape(report['tool_version'])}</td></tr>"
            f"<tr><th>bundle</th><td>{html.escape(report['bundle']['name'])} <code>sha256 {report['bundle']['sha256']}</code>"
            + ("; each face scored as the mean of it and its mirror image" if report["bundle"].get("mirror_average") else "")
            + "</td></tr>"
            + _face_detector_row(report.get("face_detector")) +
            f"<tr><th>execution provider</th><td>{html.escape(report['provider'])}</td></tr>"
            f"<tr><th>decision</th><td>fake when score ≥ {threshold:g}"
            + (f"; uncertain within ±{band:g}" if band else "") + "</td></tr>"
            f"<tr><th>settings</th><td><code>{html.escape(str(settings))}</code></td></tr>"
            f"<tr><th>versions</th><td><code>{html.escape(str(report.get('versions', {})))}</code></td></tr></table>")
    sections = []
    for entry, result in zip(report["files"], results):
        colour = VERDICT_COLOURS[entry["verdict"]]
        score = "–" if entry["score"] is None else f"{entry['score']:.4f}"
        body = (f'<h2>{html.escape(entry["path"])}</h2><p><span class="verdict" style="background:{colour}">'
                f'{entry["verdict"]}</span> score {score} (threshold {threshold:g}); {entry["kind"] or "?"}, '
                f'{entry["frames_analyzed"]} frames analysed, {entry["faces"]} face(s)</p>'
                f'<p><code>sha256 {entry["sha256"] or "–"}</code></p>')
        if entry["error"]:
            body += f"<p>error: {html.escape(entry['error'])}</p>"
        body += timeline_svg(result, threshold, band) + _identity_rows(result, weights)
        sections.append(body)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>forensic scan report</title>"
            f"<style>{STYLE}</style></head><body>{head}{''.join(sections)}</body></html>")


def write_html(report: dict, results: list[FileResult], weights: dict[str, float], destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    # A name that is not valid UTF-8 is shown with its odd bytes escaped (bad\udcff.jpg).
    atomic_write_text(destination, render(report, results, weights), errors="backslashreplace")
    return destination


def _not_deciding_note(identity) -> str:
    reason = why_not_deciding(identity)
    return "" if reason is None else f" ({html.escape(reason)}: does not decide)"
