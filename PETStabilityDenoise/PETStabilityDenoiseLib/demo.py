"""``petstab demo``: a low-dose brain case, simulated from the bundled BrainWeb labels, denoised and plotted.

Nothing is downloaded: the labels of BrainWeb subject 04 ship inside the
package (under 1 MB). The demo writes the simulated case, the four output
volumes with run.json, ``demo.png`` and ``metrics.json``, and prints PVR,
white-matter noise and ROI bias against the truth for OSEM, Gaussian-
filtered OSEM (FWHM 1.5 voxels, the paper's ROI setting), DIP and the blend.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import metrics
from .dip import DIPConfig
from .filters import gaussian_fwhm
from .geometry import resample_to_reference
from .pipeline import denoise
from .progress import make_reporter
from .run_folder import write_run
from .simulation import SimulationConfig, bundled_labels_path, dose_label, simulate_case

log = logging.getLogger(__name__)

GAUSSIAN_FWHM_VOXELS = 1.5


def score(images: dict, case) -> dict:
    """PVR, WM std and CoV, and ROI bias against the truth, per image."""
    masks = {k: sitk.GetArrayFromImage(v).astype(bool) for k, v in case.masks.items()}
    truth = sitk.GetArrayFromImage(case.truth)
    table = {}
    for name, image in images.items():
        std, cov = metrics.wm_noise(image, masks["wm_eroded"])
        table[name] = {
            "pvr": metrics.peak_to_valley_ratio(image, [masks["peak_left"], masks["peak_right"]], masks["valley"]),
            "wm_std": std, "wm_cov": cov,
            "lesion_cr": metrics.contrast_recovery(image, masks["lesions"], masks["lesion_background"],
                                                   case.lesion_true_ratio),
            "roi_bias": {k[4:]: metrics.roi_bias(image, truth, m) for k, m in masks.items() if k.startswith("roi_")},
        }
    return table


def format_table(table: dict) -> str:
    rois = list(next(iter(table.values()))["roi_bias"])
    header = f"{'image':<22}{'PVR':>7}{'WM CoV':>8}{'lesion CR':>10}" + "".join(f"{r[:10]:>11}" for r in rois)
    rows = [header, "-" * len(header)]
    for name, m in table.items():
        rows.append(f"{name:<22}{m['pvr']:>7.3f}{m['wm_cov']:>8.3f}{m['lesion_cr']:>10.3f}"
                    + "".join(f"{100 * m['roi_bias'][r]:>10.1f}%" for r in rois))
    return "\n".join(rows) + "\n(ROI columns: bias of the ROI mean against the truth)"


def plot(path: Path, panels: dict, slice_index: int, pet_vmax: float) -> None:
    """One axial slice per panel; the PET panels share one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.6), constrained_layout=True)
    for ax, (title, (volume, kind)) in zip(axes, panels.items()):
        section = volume[slice_index]
        if kind == "pet":
            shown = ax.imshow(section, cmap="gray_r", vmin=0, vmax=pet_vmax, origin="lower")
        elif kind == "stability":
            shown = ax.imshow(section, cmap="inferno", vmin=0, vmax=float(np.percentile(volume, 99.5)), origin="lower")
        else:
            shown = ax.imshow(section, cmap="gray", origin="lower")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, orientation="horizontal", fraction=0.05, pad=0.02)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(out_dir: Path, *, dose: float, config: DIPConfig, alpha: float = 0.6, progress: str = "bar") -> dict:
    """Simulates, denoises, plots and scores one case; returns the metrics table."""
    out_dir = Path(out_dir)
    log.info("Simulating a 1/%g-dose FDG case from BrainWeb subject 04", 1 / dose)
    case = simulate_case(sitk.ReadImage(str(bundled_labels_path())), SimulationConfig(doses=(dose,), seed=0))
    case_paths = case.write(out_dir / "case")
    pet = case.osem[dose]
    log.info("Denoising with %d epochs (interval %d, start %d)", config.epochs, config.interval, config.start)
    with make_reporter(progress) as report:
        result = denoise(pet, case.mr, config, alpha=alpha, progress=report)
    write_run(result, out_dir / "denoised", "nii.gz", config=config,
              pet_path=case_paths[f"osem_{dose_label(dose)}"], mr_path=case_paths["mr"])

    x0 = sitk.GetArrayFromImage(pet)
    osem_name, dip_name, blend_name = f"OSEM 1/{1 / dose:g} dose", f"DIP ({config.epochs} ep)", f"blend alpha {alpha:g}"
    images = {
        osem_name: x0,
        f"Gaussian {GAUSSIAN_FWHM_VOXELS} vox": gaussian_fwhm(x0, GAUSSIAN_FWHM_VOXELS),
        dip_name: sitk.GetArrayFromImage(result.network_output),
        blend_name: sitk.GetArrayFromImage(result.denoised),
    }
    table = score(images, case)
    print(format_table(table))
    (out_dir / "metrics.json").write_text(json.dumps({"dose": dose, "alpha": alpha, "metrics": table}, indent=2))

    truth = sitk.GetArrayFromImage(case.truth)
    peaks = sitk.GetArrayFromImage(case.masks["peak_left"]).astype(bool)
    slice_index = int(np.round(np.nonzero(peaks)[0].mean()))
    panels = {
        "MR (on PET grid)": (sitk.GetArrayFromImage(resample_to_reference(case.mr, pet)), "mr"),
        osem_name: (x0, "pet"),
        dip_name: (images[dip_name], "pet"),
        "stability map S": (sitk.GetArrayFromImage(result.stability), "stability"),
        blend_name: (images[blend_name], "pet"),
        "truth": (truth, "pet"),
    }
    plot(out_dir / "demo.png", panels, slice_index, pet_vmax=float(np.percentile(truth, 99.9)))
    log.info("Wrote %s and %s", out_dir / "demo.png", out_dir / "metrics.json")
    return table

