"""The study's figures: trade-offs, ROI bias, image panels and the count sweep.

They draw what ``analysis`` computed (curves, per-subject gains) or select rows; the only computation here is a
mean. Every figure is written atomically, so a figure on disk is always whole.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend
import numpy as np  # noqa: E402

from ..volumes.files import write_atomically  # noqa: E402
from .study import METHOD_LABELS  # noqa: E402

COLORS = {"gaussian": "tab:blue", "nlm": "tab:green", "dip": "tab:orange", "blend": "tab:red", "osem": "0.4",
          "ddpm": "tab:purple", "ddpm_blend": "tab:brown", "unet": "tab:olive"}
SETTING_FORMATS = {"gaussian": "{:g}", "nlm": "{:g}", "dip": "{:d}", "blend": "{:.1f}", "ddpm": "{:d}",
                   "ddpm_blend": "{:.1f}", "unet": "{:d}"}
# Markers of the methods that may have one setting only; a method with one setting is a point, not a curve.
POINT_MARKERS = {"ddpm": "D", "ddpm_blend": "s", "unet": "^"}
STRESS_LABEL = "legacy regime (PET from MR, 4.5 mm)"


def dose_title(dose: float) -> str:
    return "full dose" if dose == 1 else f"1/{round(1 / dose)} dose"


def setting_text(method: str, setting: float) -> str:
    return SETTING_FORMATS[method].format(int(setting) if SETTING_FORMATS[method] == "{:d}" else setting)


def save(fig, path: Path) -> Path:
    write_atomically(path, lambda stream: fig.savefig(stream, dpi=110, format="png"), binary=True)
    plt.close(fig)
    return path


def trade_off(curves: Dict[float, Dict[str, Dict[str, np.ndarray]]], operating_points: dict, x_label: str,
              y_label: str, path: Path) -> Path:
    """One panel per dose: y against x for every method's sweep, settings labelled, operating points ringed.

    Args:
        curves: dose -> method -> {"setting", "x", "y", "y_sd"} (means over cases, sd over subjects).
    """
    doses = list(curves)
    fig, axes = plt.subplots(1, len(doses), figsize=(4.6 * len(doses), 4.2), squeeze=False)
    for ax, dose in zip(axes[0], doses):
        for method in [m for m in METHOD_LABELS if m in curves[dose]]:
            c = curves[dose][method]
            single = len(c["setting"]) == 1
            ax.errorbar(c["x"], c["y"], yerr=c["y_sd"], color=COLORS[method],
                        marker=POINT_MARKERS.get(method, "o") if single else "o", ms=7 if single else 3,
                        lw=0 if single else 1.2, elinewidth=1, capsize=2, label=METHOD_LABELS[method])
            for setting, px, py in zip(c["setting"], c["x"], c["y"]):
                if not single:
                    ax.annotate(setting_text(method, setting), (px, py), fontsize=6, color=COLORS[method],
                                xytext=(3, 3), textcoords="offset points")
                if setting == operating_points.get(method) and not single:
                    ax.plot(px, py, marker="o", ms=10, mfc="none", mec=COLORS[method], mew=1.5)
        ax.set_title(dose_title(dose))
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("Mean over subjects and realisations (bars: sd over subjects)\nrings: operating points; "
                 "DDPM: one setting each", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def roi_bias(rows: List[dict], doses: Sequence[float], entries: Sequence[tuple], rois: Sequence[str],
             reference: str, path: Path) -> Path:
    """Box plots over cases of each ROI's bias (against ``truth`` or ``fulldose``), one box per entry.

    Args:
        rows: one condition's rows.
        entries: (color name, method, setting, label) of each box.
    """
    prefix = f"bias_{reference}_"
    fig, axes = plt.subplots(len(doses), 1, squeeze=False,
                             figsize=(min(16, max(8, 0.35 * len(rois) * len(entries))), 3.0 * len(doses)))
    width = 0.8 / len(entries)
    for ax, dose in zip(axes[:, 0], doses):
        for k, (color, method, setting, label) in enumerate(entries):
            chosen = [r for r in rows if r["dose"] == dose and r["method"] == method and r["setting"] == setting]
            if not chosen:
                continue
            values = [[100 * r[prefix + roi] for r in chosen] for roi in rois]
            positions = np.arange(len(rois)) + (k - (len(entries) - 1) / 2) * width
            box = ax.boxplot(values, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=False)
            for patch in box["boxes"]:
                patch.set_facecolor(COLORS[color])
                patch.set_alpha(0.6)
            ax.plot([], [], color=COLORS[color], lw=6, alpha=0.6, label=label)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(rois)))
        ax.set_xticklabels([roi.replace("_", " ") for roi in rois], fontsize=8)
        ax.set_ylabel("ROI bias (%)")
        ax.set_title(f"{dose_title(dose)}: bias against the {'truth' if reference == 'truth' else 'full-dose OSEM'}")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7, ncol=len(entries))
    fig.tight_layout()
    return save(fig, path)


def image_panel(panels: Dict[str, np.ndarray], dose: float, subject: str, path: Path, realisation: int = 0) -> Path:
    """One slice per image at one dose of noise realisation ``realisation``: truth, full-dose OSEM, OSEM, each
    method at its operating point, S; the keys of ``panels`` that are absent are left out."""
    names = [("truth", "truth"), ("osem_full", "OSEM full dose"), (f"osem_dose{dose}", f"OSEM {dose_title(dose)}"),
             (f"gaussian_dose{dose}", "Gaussian"), (f"nlm_dose{dose}", "Non-local means"),
             (f"dip_dose{dose}", "DIP"), (f"blend_dose{dose}", "Stability blend"),
             (f"stability_dose{dose}", "stability map S"), (f"ddpm_dose{dose}", "DDPM mean"),
             (f"ddpm_blend_dose{dose}", "DDPM blend"), (f"ddpm_std_dose{dose}", "DDPM std"),
             (f"unet_dose{dose}", "U-Net baseline"),
             (f"ddip_dose{dose}", "DDIP mean"), (f"ddip_blend_dose{dose}", "DDIP blend"),
             (f"ddip_std_dose{dose}", "DDIP std")]
    names = [(key, title) for key, title in names if key in panels]
    vmax = float(np.percentile(panels["truth"], 99.9)) * 1.1
    fig, axes = plt.subplots(1, len(names), figsize=(2.2 * len(names), 2.7))
    for ax, (key, title) in zip(axes, names):
        image = np.flipud(panels[key])
        if key.startswith(("stability", "ddpm_std", "ddip_std")):
            ax.imshow(image, cmap="inferno")
        else:
            ax.imshow(image, cmap="gray_r", vmin=0, vmax=vmax)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{subject}, realisation {realisation}, {dose_title(dose)}: axial slice through the colliculus-like peaks "
                 "(PET panels share one grey scale)", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def _mean(values: Sequence[float]) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return float(np.mean(valid)) if valid else math.nan


def count_sweep(points: Sequence[dict], stress: Optional[dict], dose: float, alpha: float, path: Path) -> Path:
    """Blend − Gaussian at matched WM CoV against the count scale: per-subject points and their mean.

    Args:
        points: per count scale, {"count_scale", "osem_wm_cov" (mean), "pvr", "lesion_cr", "hypo_recovery"},
            the last three {subject: gain} (PVR as a fraction).
        stress: the same for the legacy condition, or None; drawn apart, at its own count scale.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    scales = [p["count_scale"] for p in points]
    panels = ((axes[0], (("pvr", "PVR gain (%)", 100.0, "tab:red"),)),
              (axes[1], (("lesion_cr", "lesion CR gain", 1.0, "tab:orange"),
                         ("hypo_recovery", "hypo recovery gain", 1.0, "tab:purple"))))
    for ax, series in panels:
        for key, label, scale, color in series:
            for x, p in zip(scales, points):
                values = [scale * v for v in p[key].values()]
                ax.plot([x] * len(values), values, "o", color=color, alpha=0.35, ms=4)
            ax.plot(scales, [_mean([scale * v for v in p[key].values()]) for p in points], "-o", color=color,
                    lw=1.8, label=f"{label}: mean (dots: subjects)")
            if stress is not None:
                value = _mean([scale * v for v in stress[key].values()])
                if not math.isnan(value):
                    ax.plot([stress["count_scale"]], [value], marker="*", ms=14, color=color, mec="k",
                            ls="none", label=f"{label}: {STRESS_LABEL}")
                    if key == series[0][0]:  # one note per panel
                        ax.annotate(f"{STRESS_LABEL}, OSEM CoV {stress['osem_wm_cov']:.2f}",
                                    (stress["count_scale"], value), fontsize=6, xytext=(8, -3),
                                    textcoords="offset points")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(scales)
        ax.set_xticklabels([f"x{s:g}\nCoV {p['osem_wm_cov']:.2f}" for s, p in zip(scales, points)], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel(f"full-dose count scale (and OSEM WM CoV at {dose_title(dose)})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("blend − Gaussian at matched WM CoV (%)")
    axes[1].set_ylabel("blend − Gaussian at matched WM CoV")
    fig.suptitle(f"Stability blend (alpha {alpha:g}) against Gaussian filtering at the same white-matter noise, "
                 f"{dose_title(dose)}", fontsize=9)
    fig.tight_layout()
    return save(fig, path)
