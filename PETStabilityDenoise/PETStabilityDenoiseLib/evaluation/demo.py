"""``petstab demo``: a low-dose brain case, simulated from the bundled BrainWeb labels, denoised and plotted.

Nothing is downloaded: the labels of BrainWeb subject 04 ship inside the
package (under 1 MB). The case is the simulator's realistic default
(docs/SIMULATOR.md): a brain-dedicated scanner, regional uptake and texture
that the MR does not show, PET-only lesions and a hypometabolic region. The
demo writes the simulated case, the four output volumes with run.json,
``demo.png`` and ``metrics.json``, and prints the METHOD.md §4 metrics for
OSEM, Gaussian-filtered OSEM (FWHM 1.5 voxels, the paper's ROI setting), DIP
and the blend.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..engine.filters import gaussian_fwhm
from ..engine.pipeline import denoise
from ..engine.progress import make_reporter
from ..engine.run import write_run
from ..settings import DEFAULT_ALPHAS, DIPConfig
from ..simulation import SimulationConfig, bundled_labels_path, dose_label, simulate_case
from ..volumes.geometry import resample_to_reference
from ..volumes.io import read_volume
from ..volumes.run_folder import staged_folder
from .scoring import Scorer

log = logging.getLogger(__name__)

GAUSSIAN_FWHM_VOXELS = 1.5
TABLE_COLUMNS = (("pvr", "PVR", "{:.2f}"), ("wm_cov", "WM CoV", "{:.3f}"), ("lesion_cr", "lesion CR", "{:.3f}"),
                 ("hypo_recovery", "hypo rec.", "{:.3f}"), ("psnr_blurred", "PSNR dB", "{:.2f}"),
                 ("mean_abs_bias", "|ROI bias|", "{:.1%}"))


def score(images: dict, scorer: Scorer) -> dict:
    """The scorer's metrics per image, plus the mean |ROI bias| against full-dose OSEM over the ROIs."""
    table = {}
    for name, image in images.items():
        metrics = scorer(image)
        biases = [abs(v) for k, v in metrics.items() if k.startswith("bias_fulldose_")]
        table[name] = {**metrics, "mean_abs_bias": float(np.mean(biases))}
    return table


def format_table(table: dict) -> str:
    header = f"{'image':<22}" + "".join(f"{label:>11}" for _, label, _ in TABLE_COLUMNS)
    rows = [header, "-" * len(header)]
    for name, m in table.items():
        rows.append(f"{name:<22}" + "".join(f"{fmt.format(m[key]):>11}" for key, _, fmt in TABLE_COLUMNS))
    return "\n".join(rows) + ("\n(PSNR against the PSF-blurred truth; |ROI bias|: mean over the ROIs of the bias "
                              "against full-dose OSEM)")


def plot(path: Path, panels: dict, slices: dict, pet_vmax: float) -> None:
    """One row per named axial slice, one column per panel; the PET panels share one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(slices), len(panels), figsize=(2.6 * len(panels), 2.9 * len(slices) + 0.6),
                             squeeze=False, constrained_layout=True)
    for row, (slice_name, index) in enumerate(slices.items()):
        for ax, (title, (volume, kind)) in zip(axes[row], panels.items()):
            section = volume[index]
            if kind == "pet":
                shown = ax.imshow(section, cmap="gray_r", vmin=0, vmax=pet_vmax, origin="lower")
            elif kind == "stability":
                shown = ax.imshow(section, cmap="inferno", vmin=0, vmax=float(np.percentile(volume, 99.5)),
                                  origin="lower")
            else:
                shown = ax.imshow(section, cmap="gray", origin="lower")
            ax.set_title(title if row == 0 else "", fontsize=9)
            ax.set_axis_off()
            if row == len(slices) - 1:
                fig.colorbar(shown, ax=ax, orientation="horizontal", fraction=0.05, pad=0.02)
        axes[row][0].text(-0.08, 0.5, slice_name, transform=axes[row][0].transAxes, rotation=90, va="center",
                          ha="right", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(out_dir: Path, *, dose: float, config: DIPConfig, alpha: float = DEFAULT_ALPHAS["dip"],
             progress: str = "bar") -> dict:
    """Simulates, denoises, plots and scores one case; returns the metrics table."""
    out_dir = Path(out_dir)
    log.info("Simulating a 1/%g-dose FDG case from BrainWeb subject 04", 1 / dose)
    case = simulate_case(read_volume(bundled_labels_path()), SimulationConfig(doses=(1.0, dose), seed=0))
    case_paths = case.write(out_dir / "case")
    pet = case.osem[dose]
    log.info("Denoising with %d epochs (interval %d, start %d)", config.epochs, config.interval, config.start)
    with make_reporter(progress) as report:
        result = denoise(pet, case.mr, config, alpha=alpha, progress=report)
    with staged_folder(out_dir / "denoised") as stage:
        write_run(result, stage, "nii.gz", config=config, pet_path=case_paths[f"osem_{dose_label(dose)}"],
                  mr_path=case_paths["mr"], mr=case.mr)

    x0 = sitk.GetArrayFromImage(pet)
    osem_name, dip_name, blend_name = f"OSEM 1/{1 / dose:g} dose", f"DIP ({config.epochs} ep)", f"blend alpha {alpha:g}"
    gauss_name = f"Gaussian {GAUSSIAN_FWHM_VOXELS} vox"
    images = {
        osem_name: x0,
        gauss_name: gaussian_fwhm(x0, GAUSSIAN_FWHM_VOXELS),
        dip_name: sitk.GetArrayFromImage(result.network_output),
        blend_name: sitk.GetArrayFromImage(result.denoised),
    }
    scorer = Scorer(case, sitk.GetArrayFromImage(case.osem[1.0]))
    table = score(images, scorer)
    print(format_table(table))
    (out_dir / "metrics.json").write_text(json.dumps({"dose": dose, "alpha": alpha, "metrics": table}, indent=2))

    def centre_slice(mask: str) -> int:
        return int(np.round(np.nonzero(scorer.masks[mask])[0].mean()))

    panels = {
        "MR (on PET grid)": (sitk.GetArrayFromImage(resample_to_reference(case.mr, pet)), "mr"),
        osem_name: (x0, "pet"),
        gauss_name: (images[gauss_name], "pet"),
        dip_name: (images[dip_name], "pet"),
        "stability map S": (sitk.GetArrayFromImage(result.stability), "stability"),
        blend_name: (images[blend_name], "pet"),
        "truth (3 mm PSF)": (scorer.truth_blurred, "pet"),
    }
    slices = {"colliculi": centre_slice("peak_left"), "hypometabolism (left)": centre_slice("hypo")}
    plot(out_dir / "demo.png", panels, slices, pet_vmax=float(np.percentile(scorer.truth_blurred, 99.9)))
    log.info("Wrote %s and %s", out_dir / "demo.png", out_dir / "metrics.json")
    return table
