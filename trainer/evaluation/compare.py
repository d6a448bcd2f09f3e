"""`trainer eval --compare`: report folders side by side, printed and written as compare.csv and
compare.md.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from trainer.evaluation.console import fmt
from trainer.evaluation.errors import EvaluationError
from trainer.evaluation.masking import CHECK_NAMES
from trainer.evaluation.report import SCHEMA


def load_report(path: Path) -> dict:
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    try:
        report = json.loads(file.read_text())
    except FileNotFoundError:
        raise EvaluationError(f"{file}: no such report (run `trainer eval` first)") from None
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise EvaluationError(f"{file}: not a `trainer eval` report (schema {SCHEMA})")
    return report


def compare_reports(paths: list[Path]) -> tuple[list[str], list[list]]:
    """Column names (arch+method, made unique) and rows [label, value per report]."""
    if len(paths) < 1:
        raise EvaluationError("--compare needs at least one report folder")
    reports = [load_report(p) for p in paths]
    names = [f"{'bundle ' if r.get('bundle') else ''}{r['arch']}+{r.get('method') or '?'}" for r in reports]
    columns = [f"{n} ({Path(p).name})" if names.count(n) > 1 else n for n, p in zip(names, paths)]

    def attack(report: dict, name: str, key: str = "accuracy"):
        for result in (report.get("attacks") or {}).get("results", []):
            if result["name"] == name:
                return result[key]
        return None

    def corruption(report: dict, name: str, key: str):
        for result in (report.get("corruptions") or {}).get("results", []):
            if result["name"] == name:
                return result[key]
        return None

    def ordered(kind: str) -> list[str]:
        seen: list[str] = []
        for report in reports:
            for result in (report.get(kind) or {}).get("results", []):
                if result["name"] not in seen:
                    seen.append(result["name"])
        return seen

    rows = [["crops (real / fake)"] + [f"{r['counts']['crops']['real']} / {r['counts']['crops']['fake']}" for r in reports],
            ["decision threshold"] + [r["threshold"] for r in reports],
            ["clean accuracy"] + [r["clean"]["frame"]["accuracy"] for r in reports],
            ["clean AUC"] + [r["clean"]["frame"]["auc"] for r in reports],
            ["video AUC"] + [(r["clean"].get("video") or {}).get("auc") for r in reports]]
    for name in ordered("attacks"):
        rows.append([f"{name} acc"] + [attack(r, name) for r in reports])
    rows.append(["worst-case acc"] + [(r.get("attacks") or {}).get("worst_case", {}).get("accuracy") for r in reports])
    rows.append(["worst-case attack"] + [(r.get("attacks") or {}).get("worst_case", {}).get("accuracy_attack") for r in reports])
    rows.append(["masking checks"] + [_checks_passed(r.get("gradient_masking")) for r in reports])
    for name in ordered("corruptions"):
        rows.append([f"{name} acc"] + [corruption(r, name, "accuracy") for r in reports])
        rows.append([f"{name} AUC"] + [corruption(r, name, "auc") for r in reports])
    return columns, rows


def _checks_passed(masking: dict | None) -> str | None:
    if not masking:
        return None
    verdicts = [masking[k]["passed"] for k in CHECK_NAMES if masking[k]["passed"] is not None]
    return f"{sum(verdicts)}/{len(verdicts)} passed"


def write_compare(columns: list[str], rows: list[list], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compare.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", *columns])
        writer.writerows([[row[0], *("" if v is None else v for v in row[1:])] for row in rows])
    lines = ["| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + " | ".join([row[0], *(fmt(v) for v in row[1:])]) + " |" for row in rows]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    return [out / "compare.csv", out / "compare.md"]


def compare_table(columns: list[str], rows: list[list]):
    from rich.table import Table

    table = Table(title="trainer eval --compare")
    table.add_column("metric", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row[0], *(fmt(v) for v in row[1:]))
    return table
