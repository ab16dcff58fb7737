"""The ROI-bias reference when the reconstruction models the scanner's PSF (docs/RECONSTRUCTION.md, "A prior of the
truth before the PSF"). A measurement: the study's reference stays full-dose OSEM.

Full-dose OSEM, the reference of the study's ROI bias, models no PSF, so its ROI means carry the partial-volume loss
of the scanner's blur; a DDIP whose prior and data step undo the blur moves its ROI means away from them. Is that a
bias, or the reference's? This script scores the study's rows against the full-dose reconstruction of the same
system model: full-dose OSEM with the PSF modelled (``tomography.osem(..., resolution=...)``, as scanners offer
it), at each of ``--iterations`` (of the study's 21 subsets; a PSF model converges more slowly, so the reference
moves with the iterations). Each subject is simulated as ``ddip_study.py`` simulates it; the ``--rows`` of the
``--studies`` (``ddip_study.py --out`` files of the same cases and noise ``--realisation``) are scored against
each reference from their ROI means' ratios to full-dose OSEM, as ``ddip_study.py`` scores them against the
blurred truth.

    python benchmarks/psf_reference.py --labels-dir ../shared/data/brainweb --subjects 50 51 52 53 54 \\
        --iterations 4 8 16 32 --studies docs/reconstruction/study_data_correction.json \\
        docs/reconstruction/study_prior_sharp.json --rows ddip ddip_psf3 ddpm osem truth_blurred \\
        --out docs/reconstruction/psf_reference.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
from ddip_study import roi_bias_against, study_case

from PETStabilityDenoiseLib.engine import tomography
from PETStabilityDenoiseLib.engine.reconstruct import sinogram_projector
from PETStabilityDenoiseLib.evaluation.analysis import PAPER_ROIS, ROI_BIAS_TARGET
from PETStabilityDenoiseLib.evaluation.study import FULL_DOSE


def reference_scores(subject: str, iterations: List[int], args) -> Dict[str, dict]:
    """Full-dose OSEM with the simulator's PSF modelled, at each of ``iterations``: its scores (``bias_fulldose_*``
    against the plain full-dose OSEM the study uses) and the seconds it took; and ``truth_blurred``, the blurred
    truth's scores, which the studies' row of it must equal if they simulated the same case."""
    settings, case, scorer = study_case(subject, "realistic", args.realisation, args.labels_dir, args.threads)
    simulation = settings.simulation(args.realisation)
    data = case.sinograms[FULL_DOSE]
    projector = sinogram_projector(data)
    psf = tomography.ResolutionModel(simulation.psf_fwhm_mm, data.spacing[::-1], projector.image_shape)
    references = {"truth_blurred": scorer(scorer.truth_blurred)}
    for n in iterations:
        started = time.perf_counter()
        image = tomography.osem(data.prompts, projector, data.multiplicative, data.additive, n,
                                simulation.osem_subsets, resolution=psf)
        references[f"osem_psf{n}"] = {**scorer(image), "seconds": time.perf_counter() - started}
    return references


def same_case(study_row: dict, scores: dict) -> bool:
    """Whether a study's blurred-truth row has the ROI biases against full-dose OSEM of these ``scores``."""
    return all(math.isclose(study_row[f"bias_fulldose_{roi}"], scores[f"bias_fulldose_{roi}"], rel_tol=1e-6,
                            abs_tol=1e-9) for roi in PAPER_ROIS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels-dir", type=Path, required=True)
    parser.add_argument("--subjects", nargs="+", default=["50", "51", "52", "53", "54"])
    parser.add_argument("--realisation", type=int, default=0, help="the studies' noise realisation (default 0)")
    parser.add_argument("--dose", type=float, default=0.1, help="the studies' dose of the rows")
    parser.add_argument("--iterations", type=int, nargs="+", default=[4, 8, 16, 32],
                        help="OSEM iterations of each reference, with the simulator's subsets")
    parser.add_argument("--studies", type=Path, nargs="+", required=True)
    parser.add_argument("--rows", nargs="+", default=["ddip", "ddip_psf3", "ddpm", "osem", "truth_blurred"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the references' scores and the rows' biases as JSON here")
    args = parser.parse_args()

    studies = {path.stem: json.loads(path.read_text()) for path in args.studies}
    cases = {subject: f"{subject}_realistic@{args.dose:g}" for subject in args.subjects}
    references = {subject: reference_scores(subject, args.iterations, args) for subject in args.subjects}
    for stem, study in studies.items():
        for subject, case in cases.items():
            if not same_case(study[case]["truth_blurred"], references[subject]["truth_blurred"]):
                raise SystemExit(f"{stem}'s {case} is not the case simulated here: give its --realisation")
    table: Dict[str, Dict[str, dict]] = {}
    for n in args.iterations:
        name = f"osem_psf{n}"
        print(f"\nreference: full-dose OSEM with the PSF, {n} iterations; largest |ROI bias| "
              f"per subject, cases within {100 * ROI_BIAS_TARGET:g} %, and the largest ROI's bias averaged over the subjects")
        table[name] = {}
        for stem, study in studies.items():
            for row in args.rows:
                if not all(row in study[case] for case in cases.values()):
                    continue
                biases = np.array([roi_bias_against(study[case][row], references[subject][name])
                                   for subject, case in cases.items()])
                largest, mean = np.abs(biases).max(axis=1), biases.mean(axis=0)
                worst = int(np.abs(mean).argmax())
                table[name][f"{stem}:{row}"] = {
                    "max_abs_bias": dict(zip(args.subjects, largest.tolist())),
                    "within_target": int((largest <= ROI_BIAS_TARGET).sum()),
                    "mean_bias": dict(zip(PAPER_ROIS, mean.tolist())), "worst_mean_roi": PAPER_ROIS[worst]}
                print(f"  {stem + ':' + row:<40} " + " / ".join(f"{100 * b:.1f}" for b in largest)
                      + f" %  {int((largest <= ROI_BIAS_TARGET).sum())} of {len(largest)}"
                      + f"  {100 * mean[worst]:+.1f} % ({PAPER_ROIS[worst]})")
        for key, label in (("truth", "the truth"), ("fulldose", "plain full-dose OSEM")):
            own = np.mean([[references[s][name][f"bias_{key}_{roi}"] for roi in PAPER_ROIS] for s in args.subjects],
                          axis=0)
            print(f"  the reference against {label}: "
                  + " ".join(f"{roi} {100 * b:+.1f}" for roi, b in zip(PAPER_ROIS, own)) + " %")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"references": references, "rows": table}, indent=1))


if __name__ == "__main__":
    main()
