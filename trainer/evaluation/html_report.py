"""index.html: the report's tables, its plots and heatmaps, a failed gradient-masking check in red."""

from __future__ import annotations

import html
from pathlib import Path

from trainer.evaluation.console import fmt
from trainer.evaluation.heatmaps import CELLS
from trainer.evaluation.masking import check_lines


def _table(headers: list[str], rows: list[list], row_classes: list[str | None] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    classes = row_classes or [None] * len(rows)
    body = "".join((f"<tr class='{css}'>" if css else "<tr>") + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row)
                   + "</tr>" for row, css in zip(rows, classes))
    return f"<table><tr>{head}</tr>{body}</table>"


def _clean_rows(metrics: dict) -> list[list]:
    ci = metrics["auc_ci95"]
    cm = metrics["confusion_matrix"]
    return [["n (real / fake)", f"{metrics['n']} ({metrics['counts']['real']} / {metrics['counts']['fake']})"],
            [f"accuracy (P(fake) >= {metrics['threshold']:.4g})", metrics["accuracy"]], ["ROC-AUC", metrics["auc"]],
            ["ROC-AUC 95% CI", f"{ci[0]:.4f} – {ci[1]:.4f}" if ci else None],
            ["TPR at 1% FPR", metrics["tpr_at_1pct_fpr"]], ["EER", metrics["eer"]],
            ["average precision", metrics["average_precision"]], ["log-loss", metrics["log_loss"]],
            ["confusion (tn fp / fn tp)", f"{cm['tn']} {cm['fp']} / {cm['fn']} {cm['tp']}"]]


def masking_table_html(masking: dict | None) -> str:
    """The gradient-masking checks as an HTML table; a failed check's row has class 'fail' (red)."""
    lines = check_lines(masking)
    rows = [[name, "not checked" if passed is None else passed, numbers] for name, passed, numbers in lines]
    return _table(["check", "result", "numbers"], rows, ["fail" if passed is False else None for _, passed, _ in lines])


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
img{max-width:100%;margin:.5em 0;border:1px solid #eee} code{font-size:.85em}
tr.fail td{color:#b00020;background:#fde7e9;font-weight:600}
p.fail{color:#b00020;font-weight:600}
.heatmaps figure{display:inline-block;margin:0 .6em .6em 0;font-size:.8em}
.heatmaps img{width:256px;image-rendering:pixelated}
"""


def _subject_html(report: dict) -> tuple[str, list[list]]:
    """The page's title line and the rows saying what was evaluated."""
    bundle = report.get("bundle")
    if bundle:
        title = f"Evaluation of bundle {bundle['name']} ({bundle['path']}, manifest sha256 {bundle['sha256'][:12]})"
        rows = [["models", "; ".join(f"{m['name']} ({m['arch']}, {m['method']}, weight {m['weight']:.3f}, "
                                      f"temperature {m.get('temperature', 1.0):.4g}, bias {m.get('bias', 0.0):.4g}, "
                                      f"gradient graph: {m['gradient_graph']})" for m in bundle["models"])],
                ["temperature (bundle; after each model's own)", bundle["temperature"]], ["decision threshold (manifest)", bundle["decision_threshold"]]]
        return title, rows
    title = f"Evaluation of {report['run_dir']} ({report['checkpoint']}, epoch {report['epoch']})"
    return title, [["arch", report["arch"]], ["method", report["method"]]]


def _heatmaps_html(heatmaps: dict | None) -> list[str]:
    if not heatmaps:
        return []
    e = html.escape
    parts = ["<h2>Heatmaps</h2>"]
    if heatmaps.get("skipped"):
        return parts + [f"<p>Not drawn: {e(heatmaps['skipped'])}</p>"]
    parts.append(f"<p>{e(heatmaps['method'])}; {e(heatmaps['sample'])}.</p>")
    for key, title, _, _ in CELLS:
        files = [f for f in heatmaps["files"] if f["cell"] == key]
        parts.append(f"<h3>{e(title)} ({len(files)})</h3><div class='heatmaps'>" + "".join(
            f"<figure><img src='{e(f['file'])}' alt='{e(f['crop'])}'><figcaption>{e(f['crop'])}<br>"
            f"{e(f['label'])}, P(fake) {f['p_fake']:.3f}</figcaption></figure>" for f in files) + "</div>")
    return parts


def render_html(report: dict, out: Path) -> str:
    """index.html: the tables, and only the plots and heatmaps that exist in `out`."""
    e = html.escape
    title, subject_rows = _subject_html(report)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>trainer eval: {e(report['arch'])}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(title)}</h1>",
             _table(["setting", "value"], [
                 *subject_rows, ["data", f"{report['data']} ({report['split']})"],
                 ["crops (real / fake)", f"{report['counts']['crops']['real']} / {report['counts']['crops']['fake']}"],
                 ["input", report.get("input")], ["subset", report["subset"]], ["seed", report["seed"]],
                 ["device", report["device"]], ["decision rule", report["threshold_rule"]], ["created", report["created"]]])]
    clean = report["clean"]
    parts.append("<h2>Clean</h2>")
    video = clean.get("video")
    headers = ["metric", "frame level"] + (["video level"] if video else [])
    frame_rows = _clean_rows(clean["frame"])
    rows = [row + ([_clean_rows(video)[i][1]] if video else []) for i, row in enumerate(frame_rows)]
    parts.append(_table(headers, rows))
    if clean.get("video_skipped"):
        parts.append(f"<p>Video level not computed: {e(clean['video_skipped'])}</p>")
    white_box = report.get("white_box") or {}
    if white_box.get("skipped_attacks"):
        parts.append(f"<p class='fail'>Black-box only: white-box attacks ({len(white_box['skipped_attacks'])}) not run "
                     f"because {e(white_box['missing'])}.</p>")
    if report.get("attacks"):
        attacks = report["attacks"]
        parts.append("<h2>Attacks (frame level)</h2>")
        if white_box.get("attacked_loss"):
            parts.append(f"<p>White-box attacks ascend the gradient of: {e(white_box['attacked_loss'])}.</p>")
        parts.append(_table(["attack", "box", "accuracy", "AUC", "Δ accuracy", "Δ AUC", "success rate", "n"],
                            [[r["name"], r["box"], r["accuracy"], r["auc"], r["accuracy_drop"], r["auc_drop"],
                              r["success_rate"], r["n"]] for r in attacks["results"]]))
        worst = attacks["worst_case"]
        parts.append(f"<p>Worst case: accuracy {fmt(worst['accuracy'])} ({e(worst['accuracy_attack'])}), "
                     f"AUC {fmt(worst['auc'])} ({e(str(worst['auc_attack']))}); correct clean and under every "
                     f"attack: {fmt(worst['per_crop_accuracy'])}</p>")
        masking = report["gradient_masking"]
        failed = [name for name, passed, _ in check_lines(masking) if passed is False]
        parts.append("<h2>Gradient-masking checks</h2>")
        if failed:
            parts.append(f"<p class='fail'>{len(failed)} check(s) FAILED ({e(', '.join(failed))}): the white-box "
                         f"robust accuracies above may overstate robustness.</p>")
        parts.append(masking_table_html(masking))
        parts.append(f"<p>Tolerance {fmt(masking['tolerance'])} ({e(masking['tolerance_rule'])}).</p>")
    adversarial = report.get("adversarial_examples")
    if adversarial:
        parts.append(f"<p>Adversarial examples: {adversarial['files']} files in <code>{e(adversarial['folder'])}</code> "
                     f"({e(adversarial['rule'])}; {e(adversarial['format'])}).</p>")
    if report.get("corruptions"):
        parts.append("<h2>Corruptions (frame level)</h2>")
        parts.append(_table(["corruption", "accuracy", "AUC", "Δ accuracy", "Δ AUC", "n"],
                            [[r["name"], r["accuracy"], r["auc"], r["accuracy_drop"], r["auc_drop"], r["n"]]
                             for r in report["corruptions"]["results"]]))
        parts.append(f"<p>{e(report['corruptions']['applied_to'])}.</p>")
    heatmaps = report.get("heatmaps")
    if heatmaps:
        heatmaps = {**heatmaps, "files": [f for f in heatmaps["files"] if (out / f["file"]).is_file()]}
    parts.extend(_heatmaps_html(heatmaps))
    plots = [name for name in report.get("plots", []) if (out / name).is_file()]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts.extend(f"<div><img src='{e(name)}' alt='{e(name)}'></div>" for name in plots)
    links = [name for name in ("metrics.json", "metrics.csv", "scores.csv") if (out / name).is_file()]
    if links:
        parts.append("<p>Data: " + ", ".join(f"<a href='{e(n)}'>{e(n)}</a>" for n in links) + "</p>")
    if report["not_done"]:
        parts.append("<h2>Not done</h2><ul>" + "".join(f"<li>{e(item)}</li>" for item in report["not_done"]) + "</ul>")
    parts.append("<h2>Versions</h2>" + _table(["library", "version"], [[k, v] for k, v in report["versions"].items()]))
    parts.append("</body></html>\n")
    return "\n".join(parts)
