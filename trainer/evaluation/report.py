"""The report folder: metrics.json (the whole report, schema SCHEMA), metrics.csv (one row per
condition), scores.csv (each crop's P(fake) under every condition), the PNG plots
(trainer.evaluation.plots) and index.html (trainer.evaluation.html_report).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from trainer.evaluation.errors import EvaluationError
from trainer.evaluation.html_report import render_html
from trainer.evaluation.metrics import video_id
from trainer.evaluation.plots import write_plots
from trainer.evaluation.summary import condition_rows
from trainer.evaluation.sweep import Collected

SCHEMA = "trainer-eval/1"
SCORES_FILE = "scores.csv"


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_report(report: dict, collected: Collected, out: Path) -> None:
    """metrics.json, metrics.csv, scores.csv, the PNG plots (when matplotlib is installed) and
    index.html into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plots(report, collected, out)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["condition", "kind", "accuracy", "auc", "n"])
        writer.writeheader()
        writer.writerows(condition_rows(report))
    with open(out / SCORES_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        keys = list(collected.scores)
        writer.writerow(["crop", "video", "label", *keys])
        for i, name in enumerate(collected.names):
            writer.writerow([name, video_id(name), int(collected.labels[i]),
                             *(f"{collected.scores[k][i]:.6f}" for k in keys)])
    (out / "index.html").write_text(render_html(report, out))


def read_scores(path: Path, condition: str = "clean") -> list[tuple[str, str, int, float]]:
    """(crop, video, label, P(fake) under `condition`: clean, or a corruption's column such as
    'h264 crf=35') for each row of a scores.csv that `write_report` wrote; a file that is missing or
    not one, or lacks that condition, is an EvaluationError naming it, in one line."""
    try:
        with open(path, newline="") as handle:
            return [(row["crop"], row["video"], int(row["label"]), float(row[condition])) for row in csv.DictReader(handle)]
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except KeyError as exc:
        raise EvaluationError(f"{path}: not a `trainer eval` {SCORES_FILE} (no {exc} column)") from None
    except (TypeError, ValueError) as exc:
        raise EvaluationError(f"{path}: not a `trainer eval` {SCORES_FILE} ({exc})") from None
