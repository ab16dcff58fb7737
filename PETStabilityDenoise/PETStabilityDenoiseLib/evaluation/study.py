"""The evaluation study: simulate each case, run every method and sweep, score, cache.

A *condition* is one simulated world (scanner, regime, count scale) with its doses, number of noise
realisations and methods; :class:`StudySettings` holds one. For each subject and noise realisation r the
simulator makes the truth, the MR and OSEM at full dose and each dose (lower doses thinned from the full-dose
counts); realisation r is ``noise_seed=r`` on the same phantom, so realisations differ only in the PET noise.
Then, at each dose:

- OSEM + Gaussian post-filter, FWHM 0 to 4 voxels in steps of 0.5 (0 is OSEM);
- non-local means (scikit-image), h at several multiples of a noise estimate;
- conditional DIP at 10 epochs over its stability window, all from one fit (88, 96, ..., 160 for the
  default 160 / 5 / 80 schedule);
- the stability blend at alpha 0, 0.1, ..., 1.0, from the same fit;
- the bundled diffusion model (its mean, and its blend over the same alpha sweep), for the first ``ddpm_realisations``
  realisations at ``ddpm_doses`` only, since it takes minutes per case on a CPU;
- where one is given, the diffusion model's regression baseline (``petstab train-ddpm --objective regression``),
  wherever the diffusion model runs.

Every image is scored by :class:`~.scoring.Scorer`. Each DIP fit and DDPM run also records how much higher its
stability map is in peaks, lesions, hypometabolism and cortex than in white matter. One (condition, subject,
realisation) is one cache file, ``<cache>/<condition slug>/<subject>_r<n>.json``, keyed by everything that
changes its numbers, so re-plotting, adding a subject or a realisation, or a second process working on other
subjects, recomputes nothing that is already there. The DDPM's and the baseline's rows are a second file,
``<subject>_r<n>_ddpm.json``, with its own key, so that a new model reruns only them, not the DIP fits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np
import SimpleITK as sitk

from ..engine.blend import blend
from ..engine.filters import gaussian_fwhm
from ..engine.pipeline import denoise, denoise_ddpm, predict_regression
from ..errors import InputError
from ..settings import DEFAULT_ALPHAS, DDPMSamplingConfig, DIPConfig
from ..simulation import SimulationConfig, simulate_case, simulation_config
from ..volumes.files import write_atomically
from ..volumes.io import read_volume
from .scoring import Scorer

log = logging.getLogger(__name__)

FULL_DOSE = 1.0
GAUSSIAN_FWHMS = tuple(float(f) for f in np.arange(0.0, 4.01, 0.5))
# DIP is scored at this many epochs, evenly spaced over its stability window (start, epochs]: the paper's
# 110, 120, ..., 200 for its 200 / 5 / 100 schedule.
DIP_EPOCH_POINTS = 10
ALPHAS = tuple(round(float(a), 1) for a in np.arange(0.0, 1.01, 0.1))
# h as multiples of the noise estimate; 1.0 is scikit-image's usual choice for Gaussian noise.
NLM_H_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
NLM_PATCH_SIZE, NLM_PATCH_DISTANCE = 3, 3
DDPM_DOSES = (0.1, 0.2)
DDPM_ALPHA = DEFAULT_ALPHAS["ddpm"]
# The operating points: the paper's Gaussian (METHOD.md §1) and the default alpha (docs/DEFAULTS.md), used for
# the ROI plots, image panels and the targets;
# DIP's is its last scored epoch, the DDPM's its number of samples (StudySettings.operating_points).
OPERATING_POINTS = {"gaussian": 1.5, "nlm": 1.0, "blend": DEFAULT_ALPHAS["dip"]}
METHOD_LABELS = {"gaussian": "OSEM + Gaussian", "nlm": "Non-local means", "dip": "Conditional DIP",
                 "blend": "Stability blend", "ddpm": "DDPM mean", "ddpm_blend": "DDPM blend",
                 "unet": "U-Net baseline"}
SETTING_NAMES = {"gaussian": "fwhm_voxels", "nlm": "h_factor", "dip": "epochs", "blend": "alpha",
                 "ddpm": "samples", "ddpm_blend": "alpha", "unet": "training_steps"}
# The columns that say where a row comes from, before its scores.
ID_COLUMNS = ("condition", "scanner", "regime", "count_scale", "realisation", "subject", "dose", "method",
              "setting_name", "setting")
MAIN_CONDITION = "main"
COUNT_SWEEP_PREFIX = "counts x"
STRESS_CONDITION = "stress: legacy wholebody"


@dataclass(frozen=True)
class Subject:
    """One anatomical model: a name for the tables and its tissue label volume."""

    name: str
    labels_path: Path


@dataclass(frozen=True)
class StudySettings:
    """One condition of the study: what is simulated, which methods run, how often.

    Args:
        doses: the dose fractions scored. The simulation always adds full dose, the reference of the ROI bias.
        dip: the DIP fit; scored at ``dip_epochs`` (those within its schedule; default: ``DIP_EPOCH_POINTS``
            epochs spread over its stability window, ending with its last).
        condition: the condition's name in the tables, e.g. "main" or "counts x0.25"; its slug names the cache
            folder.
        scanner, regime, count_scale: the simulator's scanner preset, regime and full-dose count factor.
        realisations: noise realisations per subject (noise seeds 0 .. realisations-1).
        seed: the phantom's seed (lesions, texture, misregistration), the same for every realisation.
        nlm_h_factors: non-local means h factors; empty leaves NLM out.
        ddpm: the diffusion model's sampling settings; it runs for realisations below ``ddpm_realisations``
            (0: never) at the doses that are also in ``ddpm_doses``.
        baseline_model: the folder of a regression baseline model, scored where the DDPM runs; None: not scored.
        keep_panels: store the image slices of realisation 0 for the figure panels.
        subjects: the names of the subjects this condition runs on; empty: every subject of the study.
    """

    doses: tuple
    dip: DIPConfig
    condition: str = MAIN_CONDITION
    scanner: str = "brain"
    regime: str = "realistic"
    count_scale: float = 1.0
    realisations: int = 3
    seed: int = 0
    gaussian_fwhms: tuple = GAUSSIAN_FWHMS
    dip_epochs: tuple = ()
    alphas: tuple = ALPHAS
    nlm_h_factors: tuple = NLM_H_FACTORS
    ddpm: DDPMSamplingConfig = field(default_factory=DDPMSamplingConfig)
    ddpm_realisations: int = 1
    ddpm_doses: tuple = DDPM_DOSES
    ddpm_alpha: float = DDPM_ALPHA
    baseline_model: Optional[str] = None
    keep_panels: bool = True
    subjects: tuple = ()

    def __post_init__(self) -> None:
        if not self.doses or any(not 0 < d <= 1 for d in self.doses):
            raise InputError(f"doses must be fractions in (0, 1]; got {self.doses}")
        if self.realisations < 1 or self.ddpm_realisations < 0:
            raise InputError(f"realisations must be >= 1 and ddpm_realisations >= 0; got {self.realisations}, "
                             f"{self.ddpm_realisations}")
        if 0.0 not in self.gaussian_fwhms:
            raise InputError(f"the Gaussian FWHMs must include 0 (OSEM itself, the reference); "
                             f"got {self.gaussian_fwhms}")
        epochs = [e for e in self.dip_epochs or default_dip_epochs(self.dip) if e <= self.dip.epochs]
        if not epochs:
            raise InputError(f"none of the DIP epochs {self.dip_epochs} is reached in {self.dip.epochs} epochs")
        object.__setattr__(self, "dip_epochs", tuple(epochs))
        self.simulation(0)  # refuses an unknown scanner or regime, or a bad count scale, now rather than later

    @property
    def slug(self) -> str:
        """The condition's cache folder name."""
        return re.sub(r"[^A-Za-z0-9.]+", "_", self.condition).strip("_") or "condition"

    @property
    def simulated_doses(self) -> tuple:
        # One dose tuple per dose list: the simulator draws each dose's thinning from a noise stream chosen by the
        # dose's position in this tuple, so conditions with the same doses see the same noise.
        return tuple(sorted(set(self.doses) | {FULL_DOSE}, reverse=True))

    def simulation(self, realisation: int) -> SimulationConfig:
        """The simulator's settings for noise realisation ``realisation``."""
        return simulation_config(self.scanner, self.regime, self.count_scale, doses=self.simulated_doses,
                                 seed=self.seed, noise_seed=realisation)

    def ddpm_doses_for(self, realisation: int) -> tuple:
        """The doses at which the DDPM runs in this realisation (none beyond ``ddpm_realisations``)."""
        if realisation >= self.ddpm_realisations:
            return ()
        return tuple(d for d in self.doses if d in self.ddpm_doses)

    def operating_points(self) -> Dict[str, float]:
        points = {**OPERATING_POINTS, "dip": self.dip_epochs[-1], "ddpm": self.ddpm.samples,
                  "ddpm_blend": self.ddpm_alpha}
        if self.baseline_model:
            points["unet"] = baseline_training_steps(self.baseline_model)
        return points

    def methods(self) -> List[str]:
        """The methods this condition runs (DDPM, and the baseline if given, if any realisation has it)."""
        names = ["gaussian"] + (["nlm"] if self.nlm_h_factors else []) + ["dip", "blend"]
        if self.ddpm_doses_for(0):
            names += ["ddpm", "ddpm_blend"] + (["unet"] if self.baseline_model else [])
        return names

    def key(self, realisation: int) -> str:
        """A hash of everything that changes realisation ``realisation``'s numbers in this condition, but for the
        DDPM's and the baseline's (``ddpm_key``).

        Threads are left out (they change the speed, not the result), and so are the condition's name and its
        number of realisations: changing those recomputes nothing.
        """
        fields = dataclasses.asdict(self)
        for name in ("condition", "realisations", "keep_panels", "subjects", *DDPM_FIELDS):
            fields.pop(name)
        fields["dip"].pop("threads")
        fields["realisation"] = realisation
        fields["simulation"] = self.simulation(realisation).to_dict()
        return _hash(fields)

    def ddpm_key(self, realisation: int) -> Optional[str]:
        """A hash of everything that changes the DDPM's and the baseline's numbers in realisation ``realisation``;
        None where it runs no DDPM."""
        doses = self.ddpm_doses_for(realisation)
        if not doses:
            return None
        config = dataclasses.asdict(self.ddpm)
        config.pop("threads")
        # The simulated case and the scored alphas, not DIP's settings: a DIP change leaves the DDPM's rows be.
        fields = {"realisation": realisation, "simulation": self.simulation(realisation).to_dict(),
                  "alphas": self.alphas, "doses": doses, "alpha": self.ddpm_alpha, "config": config,
                  "model_sha256": ddpm_model_checksum(self.ddpm), "sampler_version": ddpm_sampler_version()}
        if self.baseline_model:
            fields["baseline_sha256"] = model_manifest(Path(self.baseline_model)).get("sha256", "missing")
        return _hash(fields)


def _hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


# The settings that only the DDPM part of a case depends on.
DDPM_FIELDS = ("ddpm", "ddpm_realisations", "ddpm_doses", "ddpm_alpha", "baseline_model")
# A case's two parts, each a cache record with its own key.
CASE_PARTS = ("methods", "ddpm")


def default_dip_epochs(config: DIPConfig) -> tuple:
    """``DIP_EPOCH_POINTS`` epochs evenly over the stability window (start, epochs], rounded, ending at the last."""
    window = config.epochs - config.start
    return tuple(sorted({config.start + round(window * i / DIP_EPOCH_POINTS) for i in range(1, DIP_EPOCH_POINTS + 1)}
                        - {config.start}))


def model_manifest(model_dir: Path) -> dict:
    """A model folder's manifest; empty when it cannot be read (the run itself then says what is wrong)."""
    from ..engine.ddpm.weights import MANIFEST_FILE

    try:
        return json.loads((model_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return {}


def ddpm_model_checksum(config: DDPMSamplingConfig) -> str:
    """The weights' checksum from the model's manifest, so that a new model never reads old results; a corrective
    model's (DDPMConfig.corrective) is followed by its base model's."""
    from ..engine.ddpm.weights import bundled_model_dir

    manifest = model_manifest(Path(config.model_dir) if config.model_dir else bundled_model_dir())
    return manifest.get("sha256", "missing") + manifest.get("base_sha256", "")


def ddpm_sampler_version() -> int:
    """The DDPM sampler's revision, so that results of an older chain are never read as the current one's."""
    from ..engine.ddpm.sampling import SAMPLER_VERSION

    return SAMPLER_VERSION


def baseline_training_steps(model_dir: str) -> int:
    """The regression baseline's training steps (its row's setting); 0 when its manifest does not say."""
    return int(model_manifest(Path(model_dir)).get("info", {}).get("training", {}).get("steps", 0))


def study_conditions(main: StudySettings, count_scales: Sequence[float] = (), sweep_dose: float = 0.1,
                     stress: bool = False, sweep_subjects: Sequence[str] = ()) -> List[StudySettings]:
    """The main condition, then the count sweep and the stress condition if asked for.

    The extra conditions run at ``sweep_dose`` only, realisation 0 only, and only Gaussian, DIP and the blend.

    Args:
        main: the main condition; its count scale is the sweep's own entry, so it is not repeated.
        count_scales: count-scale factors of the sweep (the simulator's ``count_scale``), on the main condition's
            scanner and regime.
        stress: add the legacy regime on the wholebody scanner, where the PET is predictable from the MR.
        sweep_subjects: the subjects (names) of the extra conditions; empty: all of them.
    """
    def extra(name: str, **changes) -> StudySettings:
        return dataclasses.replace(main, condition=name, doses=(sweep_dose,), realisations=1, nlm_h_factors=(),
                                   ddpm_realisations=0, keep_panels=False, subjects=tuple(sweep_subjects), **changes)

    conditions = [main]
    for scale in sorted(set(count_scales) - {main.count_scale}):
        conditions.append(extra(f"{COUNT_SWEEP_PREFIX}{scale:g}", count_scale=float(scale)))
    if stress:
        conditions.append(extra(STRESS_CONDITION, scanner="wholebody", regime="legacy", count_scale=1.0))
    return conditions


def is_count_sweep(settings: StudySettings) -> bool:
    return settings.condition.startswith(COUNT_SWEEP_PREFIX)


def is_stress(settings: StudySettings) -> bool:
    return settings.condition == STRESS_CONDITION


def head_noise_sigma(image: np.ndarray, head: np.ndarray) -> float:
    """A noise scale for non-local means: the std of the image minus its 1-voxel Gaussian smoothing, in the head.

    It needs no truth and no wavelets, and it grows with the noise, which is all the h sweep needs.
    """
    residual = image - gaussian_fwhm(image, 2.355)
    return float(residual[head].std())


def nonlocal_means(image: np.ndarray, h_factor: float, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(image, h=h_factor * sigma, sigma=sigma, patch_size=NLM_PATCH_SIZE,
                            patch_distance=NLM_PATCH_DISTANCE, fast_mode=True).astype(np.float32)


def panel_slice_index(case) -> int:
    """The axial slice (z index) through the centre of the two colliculus-like peaks."""
    peaks = sitk.GetArrayFromImage(case.masks["peak_left"]) | sitk.GetArrayFromImage(case.masks["peak_right"])
    return int(round(np.nonzero(peaks)[0].mean()))


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Cache files


def cache_paths(cache_dir: Path, settings: StudySettings, subject: Subject, realisation: int,
                part: str = "methods") -> Dict[str, Path]:
    """The record and panel files of one part of one case (``CASE_PARTS``)."""
    folder = Path(cache_dir) / settings.slug
    stem = f"{subject.name}_r{realisation}" + ("" if part == "methods" else f"_{part}")
    return {"record": folder / f"{stem}.json", "panels": folder / f"{stem}_panels.npz"}


def part_key(settings: StudySettings, realisation: int, part: str) -> Optional[str]:
    """The key of one part of a case; None for a part that this realisation does not run."""
    return settings.key(realisation) if part == "methods" else settings.ddpm_key(realisation)


def case_parts(settings: StudySettings, realisation: int) -> List[str]:
    return [part for part in CASE_PARTS if part_key(settings, realisation, part) is not None]


def wants_panels(settings: StudySettings, realisation: int) -> bool:
    return settings.keep_panels and realisation == 0


def _part_files_exist(paths: Dict[str, Path], settings: StudySettings, realisation: int) -> bool:
    return paths["record"].is_file() and (not wants_panels(settings, realisation) or paths["panels"].is_file())


def read_part(cache_dir: Path, settings: StudySettings, subject: Subject, realisation: int,
              part: str) -> Optional[dict]:
    """The cached record of one part of a case if it is complete and made with these settings, else None."""
    paths = cache_paths(cache_dir, settings, subject, realisation, part)
    if not _part_files_exist(paths, settings, realisation):
        return None
    record = json.loads(paths["record"].read_text())
    return record if record.get("key") == part_key(settings, realisation, part) else None


def merge_parts(parts: Sequence[dict]) -> dict:
    """One case's record from its parts: the first part's fields, everyone's rows, fits and timings."""
    merged = {**parts[0], "rows": [r for p in parts for r in p["rows"]], "fits": [f for p in parts for f in p["fits"]],
              "timings": {k: v for p in parts for k, v in p["timings"].items()}}
    merged["timings"]["total_s"] = sum(p["timings"]["total_s"] for p in parts)
    return merged


def cached_record(cache_dir: Path, settings: StudySettings, subject: Subject, realisation: int) -> dict:
    """The cached record of one case; raises with what to do when it is missing or stale (for ``--replot``)."""
    where = f"{subject.name}, realisation {realisation}, condition '{settings.condition}'"
    parts = []
    for part in case_parts(settings, realisation):
        paths = cache_paths(cache_dir, settings, subject, realisation, part)
        what = "results" if part == "methods" else f"{part.upper()} results"
        if not _part_files_exist(paths, settings, realisation):
            raise FileNotFoundError(f"no cached {what} for {where} in {paths['record'].parent}: "
                                    "run without --replot first")
        record = read_part(cache_dir, settings, subject, realisation, part)
        if record is None:
            raise InputError(f"the cached {what} for {where} were made with other settings: "
                             "run without --replot to recompute them")
        parts.append(record)
    return merge_parts(parts)


def load_panels(cache_dir: Path, settings: StudySettings, subject: Subject) -> Dict[str, np.ndarray]:
    panels = {}
    for part in case_parts(settings, 0):
        with np.load(cache_paths(cache_dir, settings, subject, 0, part)["panels"]) as data:
            panels.update({name: data[name] for name in data.files})
    return panels


# ---------------------------------------------------------------------------------------------------------------
# One case


class _Case:
    """Collects one case's rows, per-fit records and panel slices while its methods run."""

    def __init__(self, settings: StudySettings, subject: Subject, realisation: int, score: Scorer, z: int) -> None:
        self.settings, self.score, self.z = settings, score, z
        self.ids = {"condition": settings.condition, "scanner": settings.scanner, "regime": settings.regime,
                    "count_scale": settings.count_scale, "realisation": realisation, "subject": subject.name}
        self.operating_points = settings.operating_points()
        self.keep_panels = wants_panels(settings, realisation)
        self.rows: List[dict] = []
        self.fits: List[dict] = []
        self.panels: Dict[str, np.ndarray] = {}

    def where(self, dose: float) -> str:
        return f"{self.ids['subject']} r{self.ids['realisation']} ({self.settings.condition}), dose {dose:g}"

    def add(self, dose: float, method: str, setting: float, image: np.ndarray) -> None:
        """Scores ``image`` as one row; keeps its slice for the panels at the method's operating point."""
        self.rows.append({**self.ids, "dose": dose, "method": method, "setting_name": SETTING_NAMES[method],
                          "setting": setting, **self.score(image)})
        if setting == self.operating_points[method]:
            self.panel(f"{method}_dose{dose}", image)

    def add_fit(self, dose: float, method: str, output: np.ndarray, stability: np.ndarray, stability_mean: float,
                seconds: float) -> None:
        """One DIP fit's or DDPM run's record: its time, its stability map's contrast against white matter, and how
        well the map ranks the error of ``output``, the network output it came with."""
        self.fits.append({**self.ids, "dose": dose, "method": method, "seconds": seconds,
                          "stability_mean": stability_mean, **self.score.stability_contrast(stability),
                          **self.score.error_ranking(output, stability)})
        self.panel(f"{'stability' if method == 'dip' else 'ddpm_std'}_dose{dose}", stability)

    def panel(self, name: str, image: np.ndarray) -> None:
        if self.keep_panels:
            self.panels[name] = image[self.z]


def _run_methods(case: _Case, simulated, dose: float, settings: StudySettings, say: Callable[[str], None],
                 timings: Dict[str, float]) -> None:
    """The filters, DIP and the blend at one dose."""
    x0 = array(simulated.osem[dose])
    case.panel(f"osem_dose{dose}", x0)
    t = time.perf_counter()
    for fwhm in settings.gaussian_fwhms:
        case.add(dose, "gaussian", fwhm, gaussian_fwhm(x0, fwhm))
    if settings.nlm_h_factors:
        sigma = head_noise_sigma(x0, case.score.masks["head"])
        for h_factor in settings.nlm_h_factors:
            case.add(dose, "nlm", h_factor, nonlocal_means(x0, h_factor, sigma))
    timings[f"filters_s_dose{dose}"] = time.perf_counter() - t

    say(f"{case.where(dose)}: fitting DIP ({settings.dip.epochs} epochs)")
    t = time.perf_counter()
    snapshots: Dict[int, np.ndarray] = {}
    result = denoise(simulated.osem[dose], simulated.mr, settings.dip, output_epochs=settings.dip_epochs,
                     on_output=lambda epoch, image: snapshots.__setitem__(epoch, image.astype(np.float32)))
    timings[f"dip_s_dose{dose}"] = seconds = time.perf_counter() - t
    for epoch in settings.dip_epochs:
        case.add(dose, "dip", epoch, snapshots[epoch])
    network_output, stability = array(result.network_output), array(result.stability)
    case.add_fit(dose, "dip", network_output, stability, result.stability_mean, seconds)
    for alpha in settings.alphas:
        blended, _ = blend(x0, network_output, stability, alpha, stability_mean=result.stability_mean)
        case.add(dose, "blend", alpha, blended)


def _run_ddpm(case: _Case, simulated, dose: float, settings: StudySettings, say: Callable[[str], None],
              timings: Dict[str, float]) -> None:
    """The diffusion model (its mean and blend sweep) and, if given, the regression baseline at one dose."""
    x0 = array(simulated.osem[dose])
    say(f"{case.where(dose)}: sampling the diffusion model")
    t = time.perf_counter()
    result = denoise_ddpm(simulated.osem[dose], simulated.mr, settings.ddpm, alpha=settings.ddpm_alpha)
    timings[f"ddpm_s_dose{dose}"] = seconds = time.perf_counter() - t
    mean, std = array(result.network_output), array(result.stability)
    case.add(dose, "ddpm", settings.ddpm.samples, mean)
    for alpha in sorted({*settings.alphas, settings.ddpm_alpha}):  # the sweep, and the DDPM's operating point
        blended, _ = blend(x0, mean, std, alpha, stability_mean=result.stability_mean)
        case.add(dose, "ddpm_blend", alpha, blended)
    case.add_fit(dose, "ddpm", mean, std, result.stability_mean, seconds)
    if settings.baseline_model:
        say(f"{case.where(dose)}: running the regression baseline")
        t = time.perf_counter()
        predicted = predict_regression(simulated.osem[dose], simulated.mr, Path(settings.baseline_model),
                                       overlap=settings.ddpm.overlap, device=settings.ddpm.device,
                                       threads=settings.ddpm.threads)
        timings[f"unet_s_dose{dose}"] = time.perf_counter() - t
        case.add(dose, "unet", baseline_training_steps(settings.baseline_model), array(predicted))


def compute_case(subject: Subject, settings: StudySettings, realisation: int, parts: Sequence[str],
                 say: Callable[[str], None]) -> Dict[str, Tuple[dict, Dict[str, np.ndarray]]]:
    """Simulates one case once and runs the methods of ``parts``: each part's cache record and panel slices."""
    t_start = time.perf_counter()
    simulation = settings.simulation(realisation)
    simulated = simulate_case(read_volume(subject.labels_path), simulation)
    full_dose = array(simulated.osem[FULL_DOSE])
    score = Scorer(simulated, full_dose)
    z = panel_slice_index(simulated)
    simulate_s = time.perf_counter() - t_start
    computed = {}
    for part in parts:
        t_part = time.perf_counter()
        case = _Case(settings, subject, realisation, score, z)
        timings = {"simulate_s": simulate_s} if part == "methods" else {}
        record: Dict[str, Any] = {"key": part_key(settings, realisation, part), **case.ids}
        if part == "methods":
            case.panel("truth", score.truth)
            case.panel("osem_full", full_dose)
            for dose in settings.doses:
                _run_methods(case, simulated, dose, settings, say, timings)
            # Full-dose OSEM's scores whatever the doses: the reference of the targets.
            record.update({"labels": str(subject.labels_path), "simulation": simulation.to_dict(),
                           "threads": _threads(settings), "full_dose_osem": {**case.ids, "dose": FULL_DOSE,
                                                                            **score(full_dose)}})
        else:
            for dose in settings.ddpm_doses_for(realisation):
                _run_ddpm(case, simulated, dose, settings, say, timings)
        # The simulation is counted once, in the methods part, which always runs first on a new case.
        timings["total_s"] = time.perf_counter() - t_part + timings.get("simulate_s", 0.0)
        record.update({"timings": timings, "rows": case.rows, "fits": case.fits})
        computed[part] = record, case.panels
    return computed


def _threads(settings: StudySettings) -> dict:
    import torch

    return {"dip": settings.dip.threads, "ddpm": settings.ddpm.threads, "torch": torch.get_num_threads()}


def write_part(paths: Dict[str, Path], record: dict, panels: Optional[Dict[str, np.ndarray]]) -> None:
    """Writes one part's panels (if any), then its record: a record on disk means its panels are there too."""
    if panels is not None:
        # Any: mypy would match the arrays against savez_compressed's allow_pickle: bool.
        write_atomically(paths["panels"], lambda stream: np.savez_compressed(stream, **cast(Dict[str, Any], panels)),
                         binary=True)
    write_atomically(paths["record"], lambda stream: json.dump(record, stream, indent=1))


def evaluate_case(subject: Subject, settings: StudySettings, realisation: int, cache_dir: Path,
                  progress: Optional[Callable[[str], None]] = None) -> dict:
    """One case's record: each part from the cache when its key matches, otherwise computed and cached."""
    parts = case_parts(settings, realisation)
    cached = {part: read_part(cache_dir, settings, subject, realisation, part) for part in parts}
    missing = [part for part in parts if cached[part] is None]
    if not missing:
        log.info("%s r%d (%s): using the cached results", subject.name, realisation, settings.condition)
        return merge_parts([cast(dict, cached[part]) for part in parts])
    say = progress or log.info
    for part, (record, panels) in compute_case(subject, settings, realisation, missing, say).items():
        write_part(cache_paths(cache_dir, settings, subject, realisation, part), record,
                   panels if wants_panels(settings, realisation) else None)
        say(f"{subject.name} r{realisation} ({settings.condition}): {part} done in {record['timings']['total_s']:.0f} s")
        cached[part] = record
    return merge_parts([cast(dict, cached[part]) for part in parts])


def evaluate(subjects: Sequence[Subject], conditions: Sequence[StudySettings], cache_dir: Path, *,
             replot: bool = False, progress: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Every (condition, subject, realisation) record: computed as needed, or with ``replot`` from the cache only.

    With ``replot`` every record is checked before any is used, so a missing or stale one stops the run at once.
    """
    records = []
    for settings in conditions:
        for subject in subjects:
            if settings.subjects and subject.name not in settings.subjects:
                continue
            for realisation in range(settings.realisations):
                if replot:
                    records.append(cached_record(cache_dir, settings, subject, realisation))
                else:
                    records.append(evaluate_case(subject, settings, realisation, cache_dir, progress))
    return records
