"""Gradient-masking checks (Athalye et al., ICML 2018; Carlini et al., "On Evaluating Adversarial
Robustness", 2019), each passed/failed with its numbers, with a tolerance of
max(0.01, 1/n) in accuracy (one crop of n); a failed check is shown in red in index.html:
  more_steps        PGD-20 accuracy <= PGD-10 accuracy + tol, at each ε both ran at
  pgd_vs_fgsm       PGD at ε' >= ε (the nearest such ε') accuracy <= FGSM at ε + tol
                    (FGSM 0.001 ↔ PGD-5 0.001; 0.005 ↔ PGD-10/20 2/255; 0.01 ↔ PGD-10/20 4/255;
                    FGSM 0.02 has no PGD at ε' >= 0.02 and is not checked)
  nonzero_gradients mean |∇ₓ attacked loss| over the clean crops > 0 (not checked without a
                    gradient)
  black_box         black-box accuracy >= the white-box accuracy at the same ε − tol
"""

from __future__ import annotations

from trainer.evaluation.sweep import Collected


def masking_tolerance(n: int) -> float:
    return max(0.01, 1.0 / max(n, 1))


def gradient_masking_checks(collected: Collected, results: dict[str, dict]) -> dict:
    """The four checks; each {"passed": True/False/None (could not be checked), "rule", numbers}."""
    n = len(collected.labels)
    tol = masking_tolerance(n)
    pgd_specs = [s for s in collected.attacks if s.family == "pgd"]
    fgsm_specs = [s for s in collected.attacks if s.family == "fgsm"]

    def same(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-9

    def verdict(pairs: list[dict]) -> bool | None:
        return all(p["passed"] for p in pairs) if pairs else None

    steps_pairs = []
    for more in pgd_specs:
        fewer = [s for s in pgd_specs if same(s.eps, more.eps) and s.steps < more.steps]
        for other in fewer:
            a_more, a_fewer = results[more.name]["accuracy"], results[other.name]["accuracy"]
            steps_pairs.append({"eps": more.eps, "fewer": other.name, "fewer_accuracy": a_fewer, "more": more.name,
                                "more_accuracy": a_more, "passed": a_more <= a_fewer + tol})

    fgsm_pairs, unchecked = [], []
    for spec in fgsm_specs:
        larger = [s for s in pgd_specs if s.eps >= spec.eps - 1e-9]
        if not larger:
            unchecked.append(spec.name)
            continue
        nearest = min(s.eps for s in larger)
        for other in (s for s in larger if same(s.eps, nearest)):
            a_pgd, a_fgsm = results[other.name]["accuracy"], results[spec.name]["accuracy"]
            fgsm_pairs.append({"fgsm": spec.name, "fgsm_accuracy": a_fgsm, "pgd": other.name, "pgd_accuracy": a_pgd,
                               "passed": a_pgd <= a_fgsm + tol})

    black = None
    if collected.black_box is not None:
        bb = collected.black_box
        white = [s for s in collected.attacks if same(s.eps, bb.eps)]
        if white:
            strongest = min(white, key=lambda s: results[s.name]["accuracy"])
            a_black, a_white = results[bb.name]["accuracy"], results[strongest.name]["accuracy"]
            black = {"passed": a_black >= a_white - tol, "black_box": bb.name, "black_box_accuracy": a_black,
                     "white_box": strongest.name, "white_box_accuracy": a_white}

    if collected.gradient_mean_abs is None:
        nonzero = {"passed": None, "reason": "no input gradient (black-box only)"}
    else:
        nonzero = {"passed": bool(collected.gradient_mean_abs > 0), "mean_abs_gradient": collected.gradient_mean_abs,
                   "zero_gradient_crop_fraction": collected.gradient_zero_fraction}
    return {
        "tolerance": tol,
        "tolerance_rule": "max(0.01, 1/n) in accuracy",
        "more_steps": {"rule": "PGD with more steps is never weaker: acc(more) <= acc(fewer) + tol at equal eps",
                       "passed": verdict(steps_pairs), "pairs": steps_pairs},
        "pgd_vs_fgsm": {"rule": "PGD at the nearest eps' >= eps is at least as strong as FGSM at eps: "
                                "acc(PGD) <= acc(FGSM) + tol",
                        "passed": verdict(fgsm_pairs), "pairs": fgsm_pairs, "not_checked": unchecked},
        "nonzero_gradients": {"rule": "mean |d attacked loss / d input| over the clean crops > 0", **nonzero},
        "black_box": {"rule": "black-box (Square-like random search) accuracy >= white-box accuracy at the same eps - tol",
                      **(black or {"passed": None, "reason": "no black-box attack or no white-box attack at its eps"})},
    }


CHECK_NAMES = ("more_steps", "pgd_vs_fgsm", "nonzero_gradients", "black_box")


def check_lines(masking: dict | None) -> list[tuple[str, bool | None, str]]:
    """(check, passed, numbers) for printing and the HTML table."""
    if not masking:
        return []
    lines = []
    pairs = masking["more_steps"]["pairs"]
    lines.append(("more PGD steps not weaker", masking["more_steps"]["passed"],
                  "; ".join(f"{p['more']} {p['more_accuracy']:.3f} vs {p['fewer']} {p['fewer_accuracy']:.3f}" for p in pairs)
                  or "no pairs"))
    pairs = masking["pgd_vs_fgsm"]["pairs"]
    lines.append(("PGD at least as strong as FGSM", masking["pgd_vs_fgsm"]["passed"],
                  "; ".join(f"{p['pgd']} {p['pgd_accuracy']:.3f} vs {p['fgsm']} {p['fgsm_accuracy']:.3f}" for p in pairs)
                  or "no pairs"))
    gradient = masking["nonzero_gradients"]
    lines.append(("non-zero input gradients", gradient["passed"],
                  f"mean |grad| {gradient['mean_abs_gradient']:.3e}, crops with zero gradient "
                  f"{gradient['zero_gradient_crop_fraction']:.2f}" if "mean_abs_gradient" in gradient
                  else gradient.get("reason", "")))
    black = masking["black_box"]
    lines.append(("black-box no stronger than white-box", black["passed"],
                  f"{black['black_box']} {black['black_box_accuracy']:.3f} vs {black['white_box']} "
                  f"{black['white_box_accuracy']:.3f}" if "black_box_accuracy" in black else black.get("reason", "")))
    return lines
