"""The study's figures, from its rows alone (no computation): trade-offs, ROI bias, lesion recovery, panels."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend
import numpy as np  # noqa: E402

from .study import METHOD_LABELS  # noqa: E402

COLORS = {"gaussian": "tab:blue", "nlm": "tab:green", "dip": "tab:orange", "blend": "tab:red", "osem": "0.4"}
SETTING_FORMATS = {"gaussian": "{:g}", "nlm": "{:g}", "dip": "{:d}", "blend": "{:.1f}"}


def curve(rows: List[dict], dose: float, method: str, x: str, y: str) -> Dict[str, np.ndarray]:
    """Per setting: the mean and std over subjects of ``x`` and ``y``, in setting order."""
    selected = [r for r in rows if r["dose"] == dose and r["method"] == method]
    settings = sorted({r["setting"] for r in selected})
    xs = [[r[x] for r in selected if r["setting"] == s] for s in settings]
    ys = [[r[y] for r in selected if r["setting"] == s] for s in settings]
    return {"setting": np.array(settings), "x": np.array([np.mean(v) for v in xs]),
            "y": np.array([np.mean(v) for v in ys]), "y_std": np.array([np.std(v) for v in ys])}


def dose_title(dose: float) -> str:
    return "full dose" if dose == 1 else f"1/{round(1 / dose)} dose"


def trade_off(rows: List[dict], doses: Sequence[float], operating_points: dict, x: str, y: str,
              x_label: str, y_label: str, path: Path) -> Path:
    """One panel per dose: ``y`` against ``x`` for every method's sweep, settings labelled, operating points ringed."""
    methods = [m for m in METHOD_LABELS if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(doses), figsize=(4.6 * len(doses), 4.2), squeeze=False)
    for ax, dose in zip(axes[0], doses):
        for method in methods:
            c = curve(rows, dose, method, x, y)
            ax.errorbar(c["x"], c["y"], yerr=c["y_std"], color=COLORS[method], marker="o", ms=3, lw=1.2,
                        capsize=2, label=METHOD_LABELS[method])
            for setting, px, py in zip(c["setting"], c["x"], c["y"]):
                text = SETTING_FORMATS[method].format(int(setting) if method == "dip" else setting)
                ax.annotate(text, (px, py), fontsize=6, color=COLORS[method], xytext=(3, 3),
                            textcoords="offset points")
                if setting == operating_points[method]:
                    ax.plot(px, py, marker="o", ms=10, mfc="none", mec=COLORS[method], mew=1.5)
        ax.set_title(dose_title(dose))
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("Mean over subjects (bars: std over subjects); rings: operating points", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roi_bias(rows: List[dict], doses: Sequence[float], operating_points: dict, reference: str, path: Path) -> Path:
    """Box plots of ROI bias (against ``truth`` or ``fulldose``) over subjects, methods at their operating points."""
    prefix = f"bias_{reference}_"
    rois = sorted({k[len(prefix):] for r in rows for k in r if k.startswith(prefix)})
    entries = [("osem", "gaussian", 0.0)] + [(m, m, operating_points[m]) for m in METHOD_LABELS
                                              if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(len(doses), 1, figsize=(min(16, max(8, 0.35 * len(rois) * len(entries))), 3.0 * len(doses)),
                             squeeze=False)
    width = 0.8 / len(entries)
    for ax, dose in zip(axes[:, 0], doses):
        for k, (name, method, setting) in enumerate(entries):
            values = [[100 * r[prefix + roi] for r in rows if r["dose"] == dose and r["method"] == method
                       and r["setting"] == setting] for roi in rois]
            positions = np.arange(len(rois)) + (k - (len(entries) - 1) / 2) * width
            box = ax.boxplot(values, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=False)
            for patch in box["boxes"]:
                patch.set_facecolor(COLORS[name])
                patch.set_alpha(0.6)
            ax.plot([], [], color=COLORS[name], lw=6, alpha=0.6,
                    label="OSEM" if name == "osem" else f"{METHOD_LABELS[method]} ({setting:g})")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(rois)))
        ax.set_xticklabels([roi.replace("_", " ") for roi in rois], fontsize=8)
        ax.set_ylabel("ROI bias (%)")
        ax.set_title(f"{dose_title(dose)}: bias against the {'truth' if reference == 'truth' else 'full-dose OSEM'}")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7, ncol=len(entries))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_panel(panels: Dict[str, np.ndarray], dose: float, subject: str, path: Path) -> Path:
    """One slice per image at one dose: truth, full-dose OSEM, OSEM, each method at its operating point, S."""
    names = [("truth", "truth"), ("osem_full", "OSEM full dose"), (f"osem_dose{dose}", f"OSEM {dose_title(dose)}"),
             (f"gaussian_dose{dose}", "Gaussian"), (f"nlm_dose{dose}", "Non-local means"),
             (f"dip_dose{dose}", "DIP"), (f"blend_dose{dose}", "Stability blend"),
             (f"stability_dose{dose}", "stability map S")]
    names = [(key, title) for key, title in names if key in panels]
    vmax = float(np.percentile(panels["truth"], 99.9)) * 1.1
    fig, axes = plt.subplots(1, len(names), figsize=(2.2 * len(names), 2.7))
    for ax, (key, title) in zip(axes, names):
        image = np.flipud(panels[key])
        if key.startswith("stability"):
            ax.imshow(image, cmap="inferno")
        else:
            ax.imshow(image, cmap="gray_r", vmin=0, vmax=vmax)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{subject}, {dose_title(dose)}: axial slice through the colliculus-like peaks "
                 "(PET panels share one grey scale)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
