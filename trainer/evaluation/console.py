"""What `trainer eval` prints: a table of the conditions and the headline lines."""

from __future__ import annotations

from trainer.evaluation.masking import check_lines


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "passed" if value else "FAILED"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_table(report: dict):
    """A rich Table: one row per condition (accuracy, AUC, their drops, n)."""
    from rich.table import Table

    table = Table(title=f"{report['arch']}+{report.get('method')}, {report['split']}: "
                        f"{report['counts']['crops']['real']} real / {report['counts']['crops']['fake']} fake crops")
    for header in ("condition", "accuracy", "AUC", "Δ acc", "Δ AUC", "n"):
        table.add_column(header, justify="left" if header == "condition" else "right", no_wrap=True)
    clean = report["clean"]["frame"]
    table.add_row("clean (frames)", fmt(clean["accuracy"]), fmt(clean["auc"]), "", "", str(clean["n"]))
    if report["clean"].get("video"):
        video = report["clean"]["video"]
        table.add_row("clean (videos)", fmt(video["accuracy"]), fmt(video["auc"]), "", "", str(video["n"]))
    for kind in ("attacks", "corruptions"):
        results = (report.get(kind) or {}).get("results", [])
        if results:
            table.add_section()
        for r in results:
            table.add_row(r["name"], fmt(r["accuracy"]), fmt(r["auc"]), fmt(r["accuracy_drop"]), fmt(r["auc_drop"]),
                          str(r["n"]))
    return table


def summary_lines(report: dict) -> list[str]:
    """The headline numbers and the gradient-masking verdicts, one line each."""
    clean = report["clean"]["frame"]
    ci = clean["auc_ci95"]
    lines = [f"accuracy: a crop or video is called fake when P(fake) >= {report['threshold']:.4g}",
             f"clean frames: AUC {fmt(clean['auc'])}" + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")
             + f", TPR@1%FPR {fmt(clean['tpr_at_1pct_fpr'])}, EER {fmt(clean['eer'])}, "
               f"AP {fmt(clean['average_precision'])}, log-loss {fmt(clean['log_loss'])}"]
    video = report["clean"].get("video")
    if video:
        lines.append(f"clean videos ({video['n']}): accuracy {fmt(video['accuracy'])}, AUC {fmt(video['auc'])}, "
                     f"EER {fmt(video['eer'])}")
    elif report["clean"].get("video_skipped"):
        lines.append(f"video level skipped: {report['clean']['video_skipped']}")
    white_box = report.get("white_box") or {}
    if white_box.get("skipped_attacks"):
        lines.append(f"black-box only: {len(white_box['skipped_attacks'])} white-box attacks not run because "
                     f"{white_box['missing']}")
    if report.get("attacks"):
        worst = report["attacks"]["worst_case"]
        lines.append(f"worst case over attacks: accuracy {fmt(worst['accuracy'])} ({worst['accuracy_attack']}), "
                     f"AUC {fmt(worst['auc'])} ({worst['auc_attack']})")
        for name, passed, numbers in check_lines(report["gradient_masking"]):
            verdict = "not checked" if passed is None else ("passed" if passed else "FAILED")
            lines.append(f"gradient masking: {name}: {verdict} ({numbers})")
    heatmaps = report.get("heatmaps")
    if heatmaps:
        lines.append(f"heatmaps: {len(heatmaps['files'])} PNGs in heatmaps/ ({heatmaps['method']})" if heatmaps["files"]
                     else f"heatmaps: none ({heatmaps['skipped']})")
    if report.get("adversarial_examples"):
        adversarial = report["adversarial_examples"]
        lines.append(f"adversarial examples: {adversarial['files']} PNGs in {adversarial['folder']}")
    return lines
