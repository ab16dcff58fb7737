"""The measurement behind the default alpha of the diffusion model (docs/DDPM.md) and of DDIP
(docs/RECONSTRUCTION.md), by the rule that chose DIP's.

The same tuning cases as DIP's (``tune_defaults.py``): BrainWeb subjects the evaluation does not use (default 04 and
05), at 1/10 and 1/5 dose, 2 noise realisations of one phantom, in the realistic regime. ``--method ddpm`` denoises
each case's OSEM image once with the diffusion model; ``--method ddip`` reconstructs its sinogram once with DDIP
(default settings). The mean and std are blended with the OSEM image at alpha 0 to 1 and scored against the
Gaussian sweep at matched white-matter noise. The targets and the rule are ``tune_defaults.py``'s (``TARGETS``,
``selection``): most targets met, then the alpha nearest 0.6. Target e is read from the network output, here
the mean.

These subjects are among the models' training subjects, though not these phantoms: training drew its own
uptake, texture, lesions and noise for each variant (seeds apart from the evaluation's).

    python benchmarks/tune_diffusion_alpha.py --model MODEL_DIR --out docs/ddpm/alpha
    python benchmarks/tune_diffusion_alpha.py --method ddip --realisations 1 --out docs/reconstruction/alpha_sharp_prior

Each case is cached in ``<out>/cases/`` under the model's checksum (and the DDPM sampler's revision, or DDIP's
settings' hash). Writes
results.json and prints the ranking.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_defaults import ALPHAS, BRAINWEB, FWHMS, TARGETS, selection  # noqa: E402

from PETStabilityDenoiseLib.engine.blend import blend  # noqa: E402
from PETStabilityDenoiseLib.engine.ddpm.sampling import SAMPLER_TAG  # noqa: E402
from PETStabilityDenoiseLib.engine.ddpm.weights import bundled_model_dir, bundled_prior_dir  # noqa: E402
from PETStabilityDenoiseLib.engine.filters import gaussian_fwhm  # noqa: E402
from PETStabilityDenoiseLib.engine.pipeline import DenoiseResult, denoise_ddpm  # noqa: E402
from PETStabilityDenoiseLib.engine.reconstruct import ddip_image  # noqa: E402
from PETStabilityDenoiseLib.evaluation.scoring import Scorer, at_matched_noise  # noqa: E402
from PETStabilityDenoiseLib.evaluation.study import model_manifest  # noqa: E402
from PETStabilityDenoiseLib.settings import DDIPConfig, DDPMSamplingConfig  # noqa: E402
from PETStabilityDenoiseLib.simulation import SimulationConfig, simulate_case  # noqa: E402
from PETStabilityDenoiseLib.simulation.case import labels_path  # noqa: E402


def score_case(case, dose: float, score: Scorer, method: Callable[[object, float], DenoiseResult]) -> dict:
    """One run of ``method(case, dose)`` on one case; its mean's scores and its blend's at every alpha."""
    pet = case.osem[dose]
    x0 = sitk.GetArrayFromImage(pet).astype(np.float32)
    gauss = [{"fwhm_voxels": float(f), **score(gaussian_fwhm(x0, f))} for f in FWHMS]
    started = time.perf_counter()
    result = method(case, dose)
    seconds = time.perf_counter() - started
    mean, std = (sitk.GetArrayFromImage(image).astype(np.float32) for image in (result.network_output, result.stability))
    blends = []
    for alpha in ALPHAS:
        x, _ = blend(x0, mean, std, float(alpha), stability_mean=result.stability_mean)
        point = {"alpha": alpha, **score(x)}
        for key in ("pvr", "lesion_cr", "hypo_recovery"):
            point[f"gauss_{key}_same_noise"] = at_matched_noise(gauss, point["wm_cov"], key)
        blends.append(point)
    # "dip" and "epochs" are the names tune_defaults' target_values and selection read the network output by.
    return {"dip": {**score(mean), **score.error_ranking(mean, std)}, "epochs": 0, "fit_s": seconds,
            "gaussian": gauss, "blend": blends}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=("ddpm", "ddip"), default="ddpm")
    parser.add_argument("--model", type=Path, help="the diffusion model's folder (default: the bundled one: for "
                        "ddip, the bundled prior)")
    parser.add_argument("--overlap", type=float, default=DDIPConfig.overlap,
                        help=f"ddip: the window overlap (default {DDIPConfig.overlap:g}; the runs before 2026-12-05 "
                             "used 0.25, with --model docs/reconstruction/prior_blurred)")
    parser.add_argument("--start-fraction", type=float, default=DDIPConfig.start_fraction,
                        help=f"ddip: the start time T' as a fraction of T (default {DDIPConfig.start_fraction:g})")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subjects", nargs="+", default=["04", "05"])
    parser.add_argument("--doses", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--realisations", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="simulation (phantom) seed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.model = args.model or (bundled_prior_dir() if args.method == "ddip" else bundled_model_dir())
    ddip = DDIPConfig(model_dir=str(args.model), overlap=args.overlap, start_fraction=args.start_fraction,
                      device="cpu", threads=args.threads)
    checksum = model_manifest(args.model)["sha256"][:12]
    if args.method == "ddpm":  # results of an older sampling chain are not this one's
        checksum += SAMPLER_TAG
    else:  # nor are results of other DDIP settings (runs cached before the settings' hash have none)
        checksum += "_" + ddip.settings_hash()
    ddpm = DDPMSamplingConfig(model_dir=str(args.model), device="cpu", threads=args.threads)

    def method(case, dose: float) -> DenoiseResult:
        if args.method == "ddip":  # the simulator's OSEM image of this sinogram is DDIP's start and blend input
            return ddip_image(case.sinograms[dose], case.osem[dose], case.mr, ddip)
        return denoise_ddpm(case.osem[dose], case.mr, ddpm)
    cases_dir = args.out / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)

    records = []
    for subject in args.subjects:
        for realisation in range(args.realisations):
            case = None
            for dose in args.doses:
                path = cases_dir / f"{args.method}_{checksum}_s{subject}_d{dose:g}_r{realisation}.json"
                if not path.is_file():
                    if case is None:
                        case = simulate_case(sitk.ReadImage(str(labels_path(subject, BRAINWEB))),
                                             SimulationConfig(doses=(1.0, *args.doses), seed=args.seed,
                                                              noise_seed=realisation),
                                             keep_sinograms=args.method == "ddip")
                        full_dose_osem = sitk.GetArrayFromImage(case.osem[1.0])
                        score = Scorer(case, full_dose_osem)
                        full_dose = score(full_dose_osem)
                    record = {"candidate": f"{args.method}_{checksum}", "subject": subject, "dose": dose,
                              "realisation": realisation, "full_dose_osem": full_dose,
                              **score_case(case, dose, score, method)}
                    path.write_text(json.dumps(record, indent=1))
                    print(f"s{subject} d{dose:g} r{realisation}: {record['fit_s']:.0f} s, mean PSNR "
                          f"{record['dip']['psnr_blurred']:.2f} (best Gauss "
                          f"{max(g['psnr_blurred'] for g in record['gaussian']):.2f})", flush=True)
                records.append(json.loads(path.read_text()))
    ranking = selection(records)
    print("alpha  met  " + "  ".join(f"{key}: {what.replace('DIP', args.method.upper() + ' mean')}" for key, what, _, _ in TARGETS))
    for option in sorted(ranking, key=lambda o: o["alpha"]):
        print(f"{option['alpha']:>5}  {len(option['met'])}/{len(TARGETS)}  "
              + "  ".join(f"{key} {option['values'][key]:+.3f}" for key, _, _, _ in TARGETS))
    print(f"Chosen: alpha {ranking[0]['alpha']} (meets {', '.join(ranking[0]['met'])})")
    (args.out / "results.json").write_text(json.dumps({"model_sha256": model_manifest(args.model)["sha256"],
                                                       "cache_tag": checksum,
                                                       "settings": vars(args) | {"model": str(args.model)},
                                                       "ranking": ranking, "records": records},
                                                      indent=1, default=str))


if __name__ == "__main__":
    main()
