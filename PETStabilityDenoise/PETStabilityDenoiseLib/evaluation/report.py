"""The study's outputs: results.csv, fits.csv, targets.json, the figures, and report.md.

report.md answers the paper's three claims again, checks the project's targets at 1/10 dose, shows what the
stability map singles out, and, when they were run, the count sweep and the stress condition.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union, cast

import numpy as np

from ..settings import METHODS
from ..volumes.files import write_atomically
from ..volumes.run_folder import strict_json
from . import analysis, plots
from .analysis import PAPER_ROIS, Results, summarise_cases, wins
from .study import FULL_DOSE, METHOD_LABELS, StudySettings, Subject, evaluate, is_stress, load_panels

# (key, label, format) of the tables at the operating points.
SUMMARY_METRICS = (("pvr", "PVR", "{:.3f}"), ("wm_std", "WM std", "{:.2f}"), ("wm_cov", "WM CoV", "{:.3f}"),
                   ("lesion_cr", "lesion CR", "{:.3f}"), ("hypo_recovery", "hypo recovery", "{:.3f}"),
                   ("psnr_blurred", "PSNR vs blurred truth (dB)", "{:.2f}"), ("psnr", "PSNR (dB)", "{:.2f}"),
                   ("ssim_blurred", "SSIM vs blurred truth", "{:.3f}"),
                   ("mean_bias_truth", "ROI bias vs truth", "{:+.1%}"),
                   ("mean_bias_fulldose", "ROI bias vs full-dose OSEM", "{:+.1%}"))
MATCHED_FORMATS = {"pvr": "{:+.1%}", "lesion_cr": "{:+.3f}", "hypo_recovery": "{:+.3f}"}
SPREAD_LEGEND = ("Cells read *mean ± sd over realisations / sd over subjects*: the mean over every (subject, "
                 "realisation) case; the sd over noise realisations pooled within subjects; and the sd of the "
                 "per-subject means. '–' marks a spread that needs more realisations or subjects.")


def write_csv(rows: List[dict], path: Path) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def write(stream) -> None:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    return write_atomically(path, write)


def table(header: Sequence[str], body: Sequence[Sequence[str]]) -> List[str]:
    """A markdown table; a '|' inside a cell is escaped."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in body]


def cell(values: Dict, fmt: str, with_wins: bool = False, empty: Optional[str] = None) -> str:
    """A cell from per-case values: mean ± spreads, and, for differences (``with_wins``), the cases above 0.
    ``empty``, if given, is the text when no case has a value."""
    summary = summarise_cases(values)
    if not summary.n and empty is not None:
        return empty
    if not with_wins:
        return summary.format(fmt)
    return f"{summary.format(fmt)} ({wins(values.values())})" if summary.n else wins(values.values())


def gain_cell(results: Results, condition: str, values: Dict, key: str) -> str:
    """A matched-noise difference; says so when the condition's cases lack the metric's region at all."""
    if not results.has_metric(condition, key):
        return "n/a (no such region in this regime)"
    return cell(values, MATCHED_FORMATS[key], True)


def entries(settings: StudySettings, methods: Sequence[str]) -> List[tuple]:
    """(label, method, setting) of OSEM and each method at its operating point."""
    op = settings.operating_points()
    return [("OSEM", "gaussian", 0.0)] + [(f"{METHOD_LABELS[m]} ({plots.setting_text(m, op[m])})", m, op[m])
                                          for m in METHOD_LABELS if m in methods]


# ---------------------------------------------------------------------------------------------------------------
# Sections


def conditions_table(conditions: Sequence[StudySettings]) -> List[str]:
    def ddpm(c: StudySettings) -> str:
        doses = c.ddpm_doses_for(0)
        return (f"realisations < {c.ddpm_realisations} at " + ", ".join(plots.dose_title(d) for d in doses)
                if doses else "–")

    return table(("condition", "scanner", "regime", "count scale", "doses", "realisations", "methods", "DDPM"),
                 [[c.condition, c.scanner, c.regime, f"{c.count_scale:g}",
                   ", ".join(plots.dose_title(d) for d in c.doses), str(c.realisations),
                   ", ".join(METHOD_LABELS[m] for m in c.methods()), ddpm(c)] for c in conditions])


def settings_text(main: StudySettings) -> List[str]:
    sim = main.simulation(0)
    dip = main.dip
    lines = [
        f"Main simulation: scanner `{main.scanner}` (PSF {sim.psf_fwhm_mm:g} mm, {sim.full_dose_counts:.3g} true "
        f"counts at full dose, background {sim.background_fraction:g} of trues, OSEM {sim.osem_iterations} x "
        f"{sim.osem_subsets}), regime `{main.regime}`: {sim.n_lesions} PET-only lesions (ratio {sim.lesion_ratio:g}), "
        f"GM texture {sim.texture_amplitude:g}, hypometabolism depth {sim.hypo_depth:g}, MR misregistered by "
        f"{sim.misregistration_mm:g} mm and {sim.misregistration_deg:g}°. All settings: each cache record's "
        "`simulation`.", "",
        f"DIP: {dip.epochs} epochs, stability sampled every {dip.interval} from epoch {dip.start}, {dip.optimizer} "
        f"lr {dip.learning_rate:g}, network {dip.network} {list(dip.channels)}, input {dip.input_mode}; scored at "
        f"epochs {', '.join(map(str, main.dip_epochs))}.", ""]
    if main.ddpm_doses_for(0):
        ddpm = main.ddpm
        lines[-2] += (f" DDPM: {ddpm.samples} samples, {ddpm.steps} DDIM steps from {ddpm.start_fraction:g} T, "
                      f"{'the bundled model' if not ddpm.model_dir else 'model ' + ddpm.model_dir}.")
        if main.baseline_model:
            lines[-2] += f" U-Net baseline: model {main.baseline_model}, windows as the DDPM's."
    return lines


def compute_text(records: List[dict], main: StudySettings) -> str:
    """Compute time from the cache records, and the threads they ran with."""
    per_case = [r["timings"]["total_s"] for r in records if r["condition"] == main.condition]
    total = sum(r["timings"]["total_s"] for r in records)
    parts = [f"Compute time (from the cache records): {total / 60:.1f} min in all; main condition "
             f"{np.mean(per_case) / 60:.1f} min per (subject, realisation) on average "
             f"({min(per_case) / 60:.1f}–{max(per_case) / 60:.1f} min)"]
    for method, label in (("dip", "DIP fit"), ("ddpm", "DDPM run")):
        seconds = [f["seconds"] for r in records for f in r["fits"] if f["method"] == method]
        if seconds:
            parts.append(f"{label}: {np.mean(seconds):.0f} s on average ({min(seconds):.0f}–{max(seconds):.0f} s, "
                         f"{len(seconds)} runs)")
    threads = sorted({f"DIP {t.get('dip') or 'torch default'}, DDPM {t.get('ddpm') or 'torch default'} "
                      f"(torch used {t.get('torch')})" for t in (r.get("threads", {}) for r in records)})
    return "; ".join(parts) + ". Threads: " + "; ".join(threads) + "."


def header(subjects: Sequence[Subject], conditions: Sequence[StudySettings], records: List[dict], command: str,
           replot: bool) -> List[str]:
    main = conditions[0]
    return [
        "# Evaluation on simulated brain FDG PET", "",
        f"Subjects: {', '.join(s.name for s in subjects)}. Doses: {', '.join(plots.dose_title(d) for d in main.doses)}."
        f" Noise realisations: {main.realisations} per subject ("
        + (f"noise seeds 0–{main.realisations - 1}" if main.realisations > 1 else "noise seed 0")
        + f" on one phantom, phantom seed {main.seed}).", "",
        "## Conditions", "", *conditions_table(conditions), "", *settings_text(main),
        f"Command: `{command.replace(' --replot', '')}`"
        + (" (this report was redrawn from its cache with `--replot`)" if replot else ""), "",
        compute_text(records, main), "",
        SPREAD_LEGEND + " Data: [results.csv](results.csv), one row per (condition, subject, realisation, dose, "
        "method, setting); [fits.csv](fits.csv), one row per DIP fit or DDPM run; [targets.json](targets.json).", "",
    ]


def targets_section(found: dict) -> List[str]:
    lines = [f"## Targets at {plots.dose_title(found['dose'])}", ""]
    if not found["available"]:
        return lines + [f"{plots.dose_title(found['dose'])} was not in this run.", ""]
    lines += [f"Blend at alpha {found['alpha']:g}, DIP at epoch {found['dip_epoch']}, condition "
              f"'{found['condition']}', mean over {found['cases']} (subject, realisation) cases. The margin is "
              "positive when a target is met; 'cases' counts the cases that meet it on their own.", ""]
    lines += target_table(found["targets"])
    lines += ["", "Target d, each paper ROI's mean bias of the blend against full-dose OSEM: "
              + per_roi_text(found["targets"]["d_roi_bias_vs_full_dose_osem"]), ""]
    return lines


def ddpm_targets_section(found: List[dict]) -> List[str]:
    """The diffusion model's targets, one table per dose it ran at (``analysis.ddpm_targets``)."""
    found = [f for f in found if f["available"]]
    if not found:
        return []
    lines = ["## Targets of the diffusion model", "",
             f"The DDPM mean of {found[0]['samples']} samples and its blend at alpha {found[0]['alpha']:g}, over "
             "the (subject, realisation) cases that ran it; PSNR and SSIM against the PSF-blurred truth. The "
             "margin is positive when a target is met.", ""]
    for one in found:
        lines += [f"### {plots.dose_title(one['dose'])}", "", *target_table(one["targets"]), ""]
        for name, t in one["targets"].items():
            if "per_roi" in t:
                lines += [f"{name.split('_')[0]} ({t['description'].split(':')[0]}), each paper ROI's mean bias: "
                          + per_roi_text(t), ""]
    return lines


def per_roi_text(line: dict) -> str:
    """An ROI-bias target's mean bias per paper ROI, as a sentence's end."""
    return ", ".join(f"{roi.replace('_', ' ')} {v:+.1%}" for roi, v in line["per_roi"].items()) + "."


def target_table(targets: dict) -> List[str]:
    """One row per target: what, measured (sd over subjects), goal, PASS/MISS, margin, cases meeting it."""
    body = []
    for name, t in targets.items():
        percent = t["unit"] == "relative"
        fmt = "{:+.1%}" if percent else "{:+.3f}" if t["unit"] != "dB" else "{:+.2f} dB"
        value_fmt = "{:.1%}" if percent else "{:.3f}" if t["unit"] != "dB" else "{:.2f} dB"
        measured = "n/a" if math.isnan(t["measured"]) else value_fmt.format(t["measured"])
        if not math.isnan(t["sd_subjects"]):
            measured += f" (sd over subjects {value_fmt.format(t['sd_subjects'])})"
        body.append([name.split("_")[0], t["description"], measured,
                     f"{t['comparison']} {value_fmt.format(t['target'])}", f"**{t['status']}**",
                     "n/a" if math.isnan(t["margin"]) else fmt.format(t["margin"]),
                     f"{t['cases_meeting']}/{t['cases']}"])
    return table(("", "target", "measured", "goal", "result", "margin", "cases meeting it"), body)


def claim_tradeoff(results: Results, settings: StudySettings) -> List[str]:
    """Claim 1: at the blend's WM CoV, is its PVR above the Gaussian and DIP sweeps? Where the blend is less noisy
    than every setting of a sweep, against that sweep's least noisy setting instead."""
    condition, alpha = settings.condition, settings.operating_points()["blend"]
    body = []
    for dose in settings.doses:
        def blend_point(case) -> dict:
            return results.row(condition, case, dose, "blend", alpha)

        def difference(reading, reference: str) -> Dict:
            def one_case(case) -> float:
                point = blend_point(case)
                return point["pvr"] - reading(results, condition, case, dose, point, reference, "pvr")
            return results.per_case(condition, one_case)

        blend_pvr = results.per_case(condition, lambda c: blend_point(c)["pvr"])
        row = [plots.dose_title(dose), cell(blend_pvr, "{:.3f}")]
        for reference in ("gaussian", "dip"):
            row += [cell(difference(analysis.matched, reference), "{:+.3f}", True),
                    cell(difference(analysis.least_noisy, reference), "{:+.3f}", True,
                         empty="n/a: never less noisy than all")]
        body.append(row)
    return table(("dose", "blend PVR", "blend − Gaussian at the blend's WM CoV (cases where the blend wins)",
                  "blend − Gaussian's least noisy FWHM, where the blend is less noisy than all (wins)",
                  "blend − DIP at the blend's WM CoV (wins)", "blend − DIP's least noisy epoch, where the blend "
                  "is less noisy than all (wins)"), body)


def matched_noise(results: Results, settings: StudySettings) -> List[str]:
    """Every method at its operating point against the Gaussian and DIP sweeps at its own WM CoV."""
    condition, op = settings.condition, settings.operating_points()
    comparisons = [("blend", "gaussian"), ("blend", "dip"), ("dip", "gaussian"), ("ddpm", "gaussian"),
                   ("ddpm_blend", "gaussian"), ("unet", "gaussian")]
    body = []
    for dose in settings.doses:
        present = results.methods(condition, dose)
        for method, reference in comparisons:
            if method not in present or reference not in present:
                continue
            cells = [gain_cell(results, condition, analysis.matched_gain(results, condition, dose, method, op[method],
                                                                         reference, key, relative), key)
                     for key, _, relative in analysis.MATCHED_KEYS]
            body.append([plots.dose_title(dose), f"{METHOD_LABELS[method]} ({plots.setting_text(method, op[method])})"
                         f" − {METHOD_LABELS[reference]}", *cells])
    return table(("dose", "comparison", "PVR (relative)", "lesion CR", "hypo recovery"), body)


def claim_roi_bias(results: Results, settings: StudySettings) -> List[str]:
    """Claim 2: mean ROI bias over the paper's ROIs, at the operating points."""
    condition = settings.condition
    chosen = entries(settings, settings.methods())
    body = []
    for dose in settings.doses:
        for reference, label in (("truth", "truth"), ("fulldose", "full-dose OSEM")):
            body.append([plots.dose_title(dose), label]
                        + [results.summary(condition, dose, m, s, f"mean_bias_{reference}").format("{:+.1%}")
                           for _, m, s in chosen])
    return table(("dose", "reference", *(label for label, _, _ in chosen)), body)


def claim_full_dose(results: Results, settings: StudySettings) -> List[str]:
    """Claim 3: at full dose, the blend's WM std and PVR against unfiltered OSEM, per case."""
    if FULL_DOSE not in settings.doses:
        return ["Full dose was not in this run."]
    condition, alpha = settings.condition, settings.operating_points()["blend"]

    def ratio(key: str) -> Dict:
        return results.per_case(condition, lambda c: results.row(condition, c, FULL_DOSE, "blend", alpha)[key]
                                / results.row(condition, c, FULL_DOSE, "gaussian", 0.0)[key])

    std_ratio, pvr_ratio = ratio("wm_std"), ratio("pvr")
    kept = sum(std_ratio[c] < 1 and pvr_ratio[c] >= 0.98 for c in std_ratio)
    return table(("blend WM std / OSEM WM std", "blend PVR / OSEM PVR",
                  "cases with lower noise and PVR kept within 2 %"),
                 [[cell(std_ratio, "{:.3f}"), cell(pvr_ratio, "{:.3f}"), f"{kept}/{len(std_ratio)}"]])


def stability_table(results: Results, settings: StudySettings) -> List[str]:
    ranked = any(analysis.ERROR_RANKING_KEY in f for f in results.fits)  # absent from fits cached before it existed
    body = []
    for method in METHODS:  # the engines, each with its stability map
        for dose in settings.doses:
            contrast = analysis.stability_contrast(results, settings.condition, dose, method)
            if any(s.n for s in contrast.values()):
                ranking = analysis.error_ranking(results, settings.condition, dose, method)
                body.append([METHOD_LABELS[method], plots.dose_title(dose)]
                            + [s.format("{:.2f}") for s in contrast.values()]
                            + ([ranking.format("{:.2f}")] if ranked else []))
    ranking_header = ("Spearman(S, abs. error of the output vs the PSF-blurred truth)",) if ranked else ()
    return table(("method", "dose", *(f"S {label} / S WM" for _, label in analysis.STABILITY_KEYS),
                  *ranking_header), body)


def best_of_sweeps(results: Results, settings: StudySettings) -> List[str]:
    lines = []
    methods = [m for m in METHOD_LABELS if m in settings.methods()]
    for key, label, fmt in (("psnr_blurred", "PSNR against the PSF-blurred truth", "{:.2f} dB"),
                            ("psnr", "PSNR against the truth", "{:.2f} dB"),
                            ("ssim_blurred", "SSIM against the PSF-blurred truth", "{:.3f}")):
        body = []
        for dose in settings.doses:
            row = [plots.dose_title(dose)]
            for method in methods:
                best, setting = analysis.best_of_sweep(results, settings.condition, dose, method, key)
                row.append("n/a" if math.isnan(best)
                           else f"{fmt.format(best)} at {plots.setting_text(method, setting)}")
            body.append(row)
        lines += [f"**{label}** (best of the mean over cases, and its setting):", "",
                  *table(("dose", *(METHOD_LABELS[m] for m in methods)), body), ""]
    return lines


def operating_point_table(results: Results, settings: StudySettings, dose: float) -> List[str]:
    body = [[label] + [results.summary(settings.condition, dose, method, setting, key).format(fmt)
                       for key, _, fmt in SUMMARY_METRICS]
            for label, method, setting in entries(settings, results.methods(settings.condition, dose))]
    return table(("image", *(label for _, label, _ in SUMMARY_METRICS)), body)


def condition_row(results: Results, label: str, point: dict) -> List[str]:
    return [label, cell(point["osem_wm_cov"], "{:.3f}"),
            *(gain_cell(results, point["condition"], point[f"{key}_gain"], key) for key, _, _ in analysis.MATCHED_KEYS),
            cell(point["dip_psnr_gain"], "{:+.2f}", True)]


CONDITION_HEADER = ("OSEM WM CoV", "blend − Gaussian: PVR (relative)", "lesion CR", "hypo recovery",
                    "DIP PSNR vs blurred truth − best Gaussian (dB)")


def count_sweep_section(results: Results, points: List[dict], dose: float, alpha: float,
                        figure: Path) -> List[str]:
    lines = ["## Count sweep", "",
             f"The main condition's scanner and regime with the full-dose counts scaled, at {plots.dose_title(dose)}, "
             "realisation 0 only; the main condition's realisation 0 gives its own count scale's entry. Blend at "
             f"alpha {alpha:g} against the Gaussian sweep at the blend's WM CoV, and DIP's PSNR against the best "
             "Gaussian FWHM (per case). Wins count subjects.", "",
             *table(("count scale", "condition", *CONDITION_HEADER),
                    [[f"x{p['count_scale']:g}"] + condition_row(results, p["condition"], p) for p in points]), ""]
    for key, label in (("pvr_gain", "PVR"), ("lesion_cr_gain", "lesion CR"), ("hypo_recovery_gain", "hypo recovery")):
        above, below = analysis.positive_scales(points, key)
        names = ", ".join(f"x{s:g}" for s in above) or "no count scale"
        lines.append(f"- {label}: the blend's mean gain over Gaussian at matched noise is positive at {names}"
                     + (f"; not at {', '.join(f'x{s:g}' for s in below)}." if below else "."))
    return lines + ["", f"![Blend − Gaussian at matched noise against the count scale]({figure.name})", ""]


def stress_section(results: Results, main: StudySettings, stress: StudySettings, dose: float) -> List[str]:
    rows = []
    if dose in main.doses:
        rows.append(condition_row(results, f"main, realisation 0 ({main.regime}, {main.scanner})",
                                  analysis.restrict(analysis.condition_point(results, main, dose, realisation=0),
                                                    stress.subjects)))
    rows.append(condition_row(results, stress.condition, analysis.condition_point(results, stress, dose)))
    contrast = []
    for settings in ([main] if dose in main.doses else []) + [stress]:
        summary = analysis.stability_contrast(results, settings.condition, dose, "dip", realisation=0)
        contrast.append([settings.condition] + [s.format("{:.2f}") for s in summary.values()])
    return ["## Stress condition: the legacy regime", "",
            "The first simulator's world: the PET is a function of the MR's tissue classes (one grey-matter value, "
            "no texture, no hypometabolism, faint lesions), a 4.5 mm PSF and an exactly registered MR. There the MR "
            "predicts nearly everything, so the stability map has little to single out; this is where users should "
            f"not expect a benefit. At {plots.dose_title(dose)}, realisation 0:", "",
            *table(("condition", *CONDITION_HEADER), rows), "",
            "DIP's stability-map contrast in the same cases:", "",
            *table(("condition", *(f"S {label} / S WM" for _, label in analysis.STABILITY_KEYS)), contrast), ""]


# ---------------------------------------------------------------------------------------------------------------
# Figures and the whole report


def make_figures(results: Results, main: StudySettings, subjects: Sequence[Subject], cache_dir: Path,
                 out_dir: Path) -> Dict[str, Path]:
    condition, op = main.condition, main.operating_points()
    doses = list(main.doses)

    def curves(x: str, y: str) -> Dict[float, Dict[str, Dict[str, np.ndarray]]]:
        return {dose: {m: results.curve(condition, dose, m, x, y) for m in results.methods(condition, dose)}
                for dose in doses}

    figures = {
        "tradeoff": plots.trade_off(curves("wm_cov", "pvr"), op, "white-matter CoV", "peak-to-valley ratio",
                                    out_dir / "tradeoff_pvr_wm_cov.png"),
        "lesion": plots.trade_off(curves("wm_cov", "lesion_cr"), op, "white-matter CoV", "lesion contrast recovery",
                                  out_dir / "lesion_cr_wm_cov.png"),
        "hypo": plots.trade_off(curves("wm_cov", "hypo_recovery"), op, "white-matter CoV",
                                "hypometabolism recovery", out_dir / "hypo_recovery_wm_cov.png"),
    }
    rows = [r for r in results.rows if r["condition"] == condition]
    boxes = [("osem", "gaussian", 0.0, "OSEM")] + [(m, m, s, label)
                                                   for label, m, s in entries(main, main.methods())[1:]]
    for reference in ("truth", "fulldose"):
        figures[f"roi_{reference}"] = plots.roi_bias(rows, doses, boxes, PAPER_ROIS, reference,
                                                     out_dir / f"roi_bias_{reference}.png")
    panels = load_panels(cache_dir, main, subjects[0])
    for dose in doses:
        name = plots.dose_title(dose).replace("/", "-").replace(" ", "_")
        figures[f"panel_{dose}"] = plots.image_panel(panels, dose, subjects[0].name, out_dir / f"panel_{name}.png")
    return figures


def sweep_figure(points: List[dict], stress: Optional[dict], dose: float, alpha: float, out_dir: Path) -> Path:
    def drawn(point: dict) -> dict:
        return {"count_scale": point["count_scale"], "osem_wm_cov": summarise_cases(point["osem_wm_cov"]).mean,
                **{key: analysis.per_subject(point[f"{key}_gain"]) for key, _, _ in analysis.MATCHED_KEYS}}

    return plots.count_sweep([drawn(p) for p in points], drawn(stress) if stress else None, dose, alpha,
                             out_dir / "count_sweep.png")


def write_report(results: Results, records: List[dict], subjects: Sequence[Subject],
                 conditions: Sequence[StudySettings], found: dict, out_dir: Path, figures: Dict[str, Path],
                 command: str, replot: bool) -> Path:
    main = conditions[0]
    alpha = main.operating_points()["blend"]
    lines = [
        *header(subjects, conditions, records, command, replot),
        *targets_section(found),
        *ddpm_targets_section(found["ddpm"]),
        "## Claim 1: higher PVR at lower white-matter noise", "",
        f"The blend at alpha {alpha:g} against each sweep, read at the blend's own white-matter **CoV** (the previous "
        "evaluation used the WM std; the CoV does not change with a method's overall scaling), by linear "
        "interpolation along each case's sweep, over the sweep's leading run where the noise moves one way "
        "(scoring.at_matched_noise). Where the blend is less noisy than every setting of that run, there is no "
        "matched point; the next column then compares it with the run's least noisy setting "
        "(scoring.below_least_noisy): a positive difference there means the blend has less noise than every "
        "setting and a higher PVR than the least noisy one. Wins count (subject, realisation) cases.", "",
        *claim_tradeoff(results, main), "",
        f"![PVR against WM CoV]({figures['tradeoff'].name})", "",
        "## Lesion and hypometabolism recovery at matched noise", "",
        "Each method at its operating point minus the reference sweep at the same WM CoV: PVR as a relative "
        "difference, lesion contrast recovery and hypometabolism recovery as differences (wins in brackets).", "",
        *matched_noise(results, main), "",
        f"![Lesion contrast recovery against WM CoV]({figures['lesion'].name})", "",
        f"![Hypometabolism recovery against WM CoV]({figures['hypo'].name})", "",
        "## Claim 2: ROI means are kept", "",
        "Mean over the paper's ROIs (" + ", ".join(r.replace("_", " ") for r in PAPER_ROIS) + ") of the ROI bias, "
        "at the operating points.", "", *claim_roi_bias(results, main), "",
        f"![ROI bias against the truth]({figures['roi_truth'].name})", "",
        f"![ROI bias against full-dose OSEM]({figures['roi_fulldose'].name})", "",
        "## Claim 3: at full dose, lower noise with the unfiltered PVR", "", *claim_full_dose(results, main), "",
        "## Stability-map contrast", "",
        "Mean stability S in each region over mean S in eroded white matter, per DIP fit or DDPM run (DDPM: the std "
        "of its samples). Above 1, the map singles the region out and the blend keeps more of the PET there.", "",
        *stability_table(results, main), "",
        "## Best of each sweep", "", *best_of_sweeps(results, main),
    ]
    # None only without extra conditions, when neither the count sweep nor the stress section is written.
    sweep_dose = cast(float, conditions[1].doses[0] if len(conditions) > 1 else None)
    if "count_sweep" in figures:
        points = analysis.count_sweep(results, conditions, sweep_dose)
        lines += count_sweep_section(results, points, sweep_dose, alpha, figures["count_sweep"])
    stress = [c for c in conditions if is_stress(c)]
    if stress:
        lines += stress_section(results, main, stress[0], sweep_dose)
    lines += ["## All metrics at the operating points", ""]
    for dose in main.doses:
        lines += [f"### {plots.dose_title(dose)}", "", *operating_point_table(results, main, dose), "",
                  f"![Image panel]({figures[f'panel_{dose}'].name})", ""]
    return write_atomically(Path(out_dir) / "report.md", lambda stream: stream.write("\n".join(lines)))


def run_evaluation(subjects: Sequence[Subject], conditions: Union[StudySettings, Sequence[StudySettings]],
                   out_dir: Path, *, replot: bool = False, command: str = "petstab evaluate",
                   progress: Optional[Callable[[str], None]] = None) -> Path:
    """Computes (or, with ``replot``, only reads) every case, then writes the CSVs, targets, figures and report.

    Args:
        conditions: the main condition first, then any from :func:`~.study.study_conditions`.
    """
    conditions = [conditions] if isinstance(conditions, StudySettings) else list(conditions)
    out_dir = Path(out_dir)
    cache_dir = out_dir / "cache"
    out_dir.mkdir(parents=True, exist_ok=True)
    records = evaluate(subjects, conditions, cache_dir, replot=replot, progress=progress)
    t = time.perf_counter()
    rows = [analysis.with_mean_bias(r) for record in records for r in record["rows"]]
    fits = [f for record in records for f in record["fits"]]
    results = Results(rows, fits, [record["full_dose_osem"] for record in records])
    write_csv(rows, out_dir / "results.csv")
    write_csv(fits, out_dir / "fits.csv")
    main = conditions[0]
    found = analysis.targets(results, main)
    found["ddpm"] = [analysis.ddpm_targets(results, main, dose) for dose in main.ddpm_doses_for(0)]
    write_atomically(out_dir / "targets.json",
                     lambda stream: json.dump(strict_json(found), stream, indent=1, allow_nan=False))

    figures = make_figures(results, main, subjects, cache_dir, out_dir)
    if len(conditions) > 1:
        sweep_dose = conditions[1].doses[0]
        points = analysis.count_sweep(results, conditions, sweep_dose)
        stress = [c for c in conditions if is_stress(c)]
        if points:
            stress_point = analysis.condition_point(results, stress[0], sweep_dose) if stress else None
            figures["count_sweep"] = sweep_figure(points, stress_point, sweep_dose, main.operating_points()["blend"],
                                                 out_dir)
    report = write_report(results, records, subjects, conditions, found, out_dir, figures, command, replot)
    if progress:
        progress(f"Wrote {report} and {len(figures)} figures in {time.perf_counter() - t:.0f} s")
    return report
