"""The study's outputs: results.csv, the figures, and report.md with the paper's three claims tested."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import plots
from .study import (FULL_DOSE, METHOD_LABELS, StudySettings, Subject, cached_rows, cached_timings, evaluate_subject,
                    load_panels)

SUMMARY_METRICS = (("pvr", "PVR", "{:.3f}"), ("wm_std", "WM std", "{:.2f}"), ("wm_cov", "WM CoV", "{:.3f}"),
                   ("lesion_cr", "lesion CR", "{:.3f}"), ("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"),
                   ("mean_bias_truth", "ROI bias vs truth", "{:+.1%}"),
                   ("mean_bias_fulldose", "ROI bias vs full-dose OSEM", "{:+.1%}"))


def write_csv(rows: List[dict], path: Path) -> Path:
    columns = list(rows[0])
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def with_mean_bias(row: dict) -> dict:
    """The row plus its mean ROI bias (over the ROIs) against the truth and against full-dose OSEM."""
    out = dict(row)
    for reference in ("truth", "fulldose"):
        values = [v for k, v in row.items() if k.startswith(f"bias_{reference}_")]
        out[f"mean_bias_{reference}"] = float(np.mean(values))
    return out


def select(rows: List[dict], dose: float, method: str, setting: float) -> List[dict]:
    return [r for r in rows if r["dose"] == dose and r["method"] == method and r["setting"] == setting]


def interpolate_at(rows: List[dict], subject: str, dose: float, method: str, x_value: float, x: str, y: str) -> float:
    """``y`` of one subject's sweep at ``x`` = ``x_value`` (linear); NaN outside the sweep's range of ``x``."""
    points = sorted((r[x], r[y]) for r in rows if r["subject"] == subject and r["dose"] == dose
                    and r["method"] == method)
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    if not xs.size or not xs.min() <= x_value <= xs.max():
        return math.nan
    return float(np.interp(x_value, xs, ys))


def mean_std(values: Sequence[float], fmt: str) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    return f"{fmt.format(np.mean(values))} ± {fmt.format(np.std(values)).lstrip('+')}"


def summary_table(rows: List[dict], dose: float, operating_points: dict) -> List[str]:
    entries = [("OSEM", "gaussian", 0.0)] + [(f"{METHOD_LABELS[m]} ({operating_points[m]:g})", m, operating_points[m])
                                             for m in METHOD_LABELS if any(r["method"] == m for r in rows)]
    lines = ["| image | " + " | ".join(label for _, label, _ in SUMMARY_METRICS) + " |",
             "|---" * (len(SUMMARY_METRICS) + 1) + "|"]
    for label, method, setting in entries:
        chosen = select(rows, dose, method, setting)
        cells = [mean_std([r[key] for r in chosen], fmt) for key, _, fmt in SUMMARY_METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def claim_tradeoff(rows: List[dict], doses: Sequence[float], operating_points: dict) -> List[str]:
    """Claim 1: at the blend's WM noise, is its PVR above the Gaussian and DIP sweeps?"""
    subjects = sorted({r["subject"] for r in rows})
    alpha = operating_points["blend"]
    lines = ["| dose | blend PVR | Gaussian PVR at the blend's WM std | blend − Gaussian (subjects where blend wins) "
             "| DIP PVR at the blend's WM std | blend − DIP (wins) |", "|---|---|---|---|---|---|"]
    for dose in doses:
        blend_pvr, gauss, dip, d_gauss, d_dip = [], [], [], [], []
        for subject in subjects:
            (point,) = [r for r in select(rows, dose, "blend", alpha) if r["subject"] == subject]
            g = interpolate_at(rows, subject, dose, "gaussian", point["wm_std"], "wm_std", "pvr")
            d = interpolate_at(rows, subject, dose, "dip", point["wm_std"], "wm_std", "pvr")
            blend_pvr.append(point["pvr"])
            gauss.append(g)
            dip.append(d)
            d_gauss.append(point["pvr"] - g)
            d_dip.append(point["pvr"] - d)
        lines.append(f"| {plots.dose_title(dose)} | {mean_std(blend_pvr, '{:.3f}')} | {mean_std(gauss, '{:.3f}')} | "
                     f"{mean_std(d_gauss, '{:+.3f}')} ({wins(d_gauss)}) | {mean_std(dip, '{:.3f}')} | "
                     f"{mean_std(d_dip, '{:+.3f}')} ({wins(d_dip)}) |")
    return lines


def wins(differences: Sequence[float]) -> str:
    valid = [d for d in differences if not math.isnan(d)]
    if not valid:
        return "outside the sweep's noise range"
    return f"{sum(d > 0 for d in valid)}/{len(valid)}"


def claim_roi_bias(rows: List[dict], doses: Sequence[float], operating_points: dict) -> List[str]:
    """Claim 2: mean ROI bias of Gaussian, DIP and the blend at their operating points."""
    methods = [("OSEM", "gaussian", 0.0), ("Gaussian", "gaussian", operating_points["gaussian"]),
               ("DIP", "dip", operating_points["dip"]), ("blend", "blend", operating_points["blend"])]
    lines = ["| dose | reference | " + " | ".join(name for name, _, _ in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for dose in doses:
        for reference, label in (("truth", "truth"), ("fulldose", "full-dose OSEM")):
            cells = [mean_std([r[f"mean_bias_{reference}"] for r in select(rows, dose, m, s)], "{:+.1%}")
                     for _, m, s in methods]
            lines.append(f"| {plots.dose_title(dose)} | {label} | " + " | ".join(cells) + " |")
    return lines


def claim_full_dose(rows: List[dict], operating_points: dict) -> List[str]:
    """Claim 3: at full dose, the blend's WM std and PVR against unfiltered OSEM, per subject."""
    if not any(r["dose"] == FULL_DOSE for r in rows):
        return ["Full dose was not in this run."]
    subjects = sorted({r["subject"] for r in rows})
    std_ratio, pvr_ratio = [], []
    for subject in subjects:
        (osem,) = [r for r in select(rows, FULL_DOSE, "gaussian", 0.0) if r["subject"] == subject]
        (blended,) = [r for r in select(rows, FULL_DOSE, "blend", operating_points["blend"]) if r["subject"] == subject]
        std_ratio.append(blended["wm_std"] / osem["wm_std"])
        pvr_ratio.append(blended["pvr"] / osem["pvr"])
    return ["| blend WM std / OSEM WM std | blend PVR / OSEM PVR | subjects with lower noise and PVR kept within 2 % |",
            "|---|---|---|",
            f"| {mean_std(std_ratio, '{:.3f}')} | {mean_std(pvr_ratio, '{:.3f}')} | "
            f"{sum(s < 1 and p >= 0.98 for s, p in zip(std_ratio, pvr_ratio))}/{len(subjects)} |"]


def best_psnr(rows: List[dict], doses: Sequence[float]) -> List[str]:
    lines = ["| dose | " + " | ".join(METHOD_LABELS[m] for m in METHOD_LABELS) + " |", "|---|" + "---|" * len(METHOD_LABELS)]
    for dose in doses:
        cells = []
        for method in METHOD_LABELS:
            c = plots.curve(rows, dose, method, "setting", "psnr")
            if not c["y"].size:
                cells.append("n/a")
                continue
            best = int(np.argmax(c["y"]))
            cells.append(f"{c['y'][best]:.2f} dB at {plots.SETTING_FORMATS[method].format(int(c['setting'][best]) if method == 'dip' else c['setting'][best])}")
        lines.append(f"| {plots.dose_title(dose)} | " + " | ".join(cells) + " |")
    return lines


def write_report(rows: List[dict], subjects: Sequence[Subject], settings: StudySettings, out_dir: Path,
                 figures: Dict[str, Path], timings: Dict[str, dict], command: str, replot: bool) -> Path:
    doses = list(settings.doses)
    op = settings.operating_points()
    total_s = sum(t["total_s"] for t in timings.values())
    lines = [
        "# Evaluation on simulated brain FDG PET", "",
        f"Subjects: {', '.join(s.name for s in subjects)}. Doses: {', '.join(plots.dose_title(d) for d in doses)}. "
        f"Simulation seed {settings.seed}, {settings.n_lesions} PET-only lesions per subject. DIP: "
        f"{settings.dip.epochs} epochs, sampling every {settings.dip.interval} from epoch {settings.dip.start}.", "",
        f"Command: `{command.replace(' --replot', '')}`"
        + (" (this report was redrawn from its cache with `--replot`)" if replot else ""), "",
        f"Compute time (from the cache records): {total_s / 60:.1f} min in all, "
        f"{total_s / 60 / max(len(subjects), 1):.1f} min per subject.", "",
        "Mean ± std over subjects throughout. Data: [results.csv](results.csv), one row per "
        "(subject, dose, method, setting).", "",
        "## Claim 1: higher PVR at lower white-matter noise", "",
        "The blend at alpha " f"{op['blend']:g} against each sweep, read at the blend's own WM std "
        "(linear interpolation along each subject's sweep).", "", *claim_tradeoff(rows, doses, op), "",
        f"![PVR against WM std]({figures['tradeoff'].name})", "",
        "## Claim 2: ROI means are kept", "",
        "Mean over the ROIs of the ROI bias, at the operating points.", "", *claim_roi_bias(rows, doses, op), "",
        f"![ROI bias against the truth]({figures['roi_truth'].name})", "",
        f"![ROI bias against full-dose OSEM]({figures['roi_fulldose'].name})", "",
        "## Claim 3: at full dose, lower noise with the unfiltered PVR", "", *claim_full_dose(rows, op), "",
        "## Lesion contrast recovery against noise", "",
        f"![Lesion contrast recovery against WM CoV]({figures['lesion'].name})", "",
        "## Best PSNR of each sweep", "", *best_psnr(rows, doses), "",
        "## All metrics at the operating points", "",
    ]
    for dose in doses:
        lines += [f"### {plots.dose_title(dose)}", "", *summary_table(rows, dose, op), "",
                  f"![Image panel]({figures[f'panel_{dose}'].name})", ""]
    path = Path(out_dir) / "report.md"
    path.write_text("\n".join(lines))
    return path


def run_evaluation(subjects: Sequence[Subject], settings: StudySettings, out_dir: Path, *, replot: bool = False,
                   command: str = "petstab evaluate", progress: Optional[Callable[[str], None]] = None) -> Path:
    """Computes (or, with ``replot``, only reads) every subject's rows, then writes the CSV, figures and report."""
    out_dir = Path(out_dir)
    cache_dir = out_dir / "cache"
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if replot:
        rows = cached_rows(subjects, settings, cache_dir)
    else:
        rows = [row for subject in subjects for row in evaluate_subject(subject, settings, cache_dir, progress)]
    rows = [with_mean_bias(r) for r in rows]
    write_csv(rows, out_dir / "results.csv")
    op = settings.operating_points()
    doses = list(settings.doses)
    figures = {
        "tradeoff": plots.trade_off(rows, doses, op, "wm_std", "pvr", "white-matter std", "peak-to-valley ratio",
                                    out_dir / "tradeoff_pvr_wm_std.png"),
        "lesion": plots.trade_off(rows, doses, op, "wm_cov", "lesion_cr", "white-matter CoV",
                                  "lesion contrast recovery", out_dir / "lesion_cr_wm_cov.png"),
        "roi_truth": plots.roi_bias(rows, doses, op, "truth", out_dir / "roi_bias_truth.png"),
        "roi_fulldose": plots.roi_bias(rows, doses, op, "fulldose", out_dir / "roi_bias_fulldose.png"),
    }
    panels = load_panels(subjects[0], cache_dir)
    for dose in doses:
        figures[f"panel_{dose}"] = plots.image_panel(panels, dose, subjects[0].name,
                                                     out_dir / f"panel_{plots.dose_title(dose).replace('/', '-').replace(' ', '_')}.png")
    report = write_report(rows, subjects, settings, out_dir, figures, cached_timings(subjects, cache_dir), command,
                          replot)
    if progress:
        progress(f"Wrote {report} and {len(figures)} figures in {time.perf_counter() - t:.0f} s")
    return report
