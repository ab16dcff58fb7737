"""Scanner presets of the simulator (resolution, full-dose counts, reconstruction) and its regimes.

``brain`` is modelled on VRAIN, the brain-dedicated scanner of the stability-map paper (Akamatsu et al., Phys Med
Biol 2022;67:225011): it resolves 2.2 mm rods, and its sensitivity, with the TOF gain for a 20 cm head, is
25 kcps/MBq. Its full-dose counts follow from that sensitivity and the paper's protocol (289 MBq FDG, a 30-minute
scan from 104 minutes after injection); ``brain_full_dose_counts`` writes the arithmetic out, and
docs/SIMULATOR.md explains each factor. ``wholebody`` is the project's first simulator: a 4.5 mm PSF and about
1e8 counts, like a whole-body PET/CT bed position over the head.

The regimes are the phantom's: ``realistic`` (regional uptake, PET-only texture, lesions and hypometabolism, a
misregistered MR), ``legacy``, the first simulator's, where the PET is a function of the MR, and ``amyloid``, an
amyloid-negative tracer pattern (white matter above the cortex) for out-of-distribution tests of FDG-trained
models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from ..settings import DEFAULT_OSEM_ITERATIONS, DEFAULT_OSEM_SUBSETS

F18_HALF_LIFE_MIN = 109.77

# The paper's protocol and VRAIN's published sensitivity.
INJECTED_MBQ = 289.0
SCAN_START_MIN = 104.0
SCAN_DURATION_MIN = 30.0
# NEMA sensitivity (no attenuation) times the TOF gain for a 20 cm object: counts that are worth as much as
# this many non-TOF counts, which is what our non-TOF simulation needs.
SENSITIVITY_CPS_PER_MBQ = 25e3
# The brain's share of the administered FDG in ICRP's biokinetic model (Publication 106).
BRAIN_UPTAKE_FRACTION = 0.08
# Measured in this simulator on BrainWeb subject 04 (subjects 05, 50 and 54: 1.14-1.19 and 0.215-0.231):
# activity of the whole head over that of the brain (scalp, muscle and marrow also emit), and the fraction of
# emissions that survive attenuation (mu 0.0975/cm over the head).
HEAD_TO_BRAIN_ACTIVITY = 1.18
ATTENUATION_SURVIVAL = 0.22


def decay_factor(minutes: float) -> float:
    return math.exp(-math.log(2.0) * minutes / F18_HALF_LIFE_MIN)


def brain_full_dose_counts() -> float:
    """Expected true counts of a whole simulated head at VRAIN's full dose (about 1.3e8)."""
    decay_during_scan = (1.0 - decay_factor(SCAN_DURATION_MIN)) / (
        math.log(2.0) * SCAN_DURATION_MIN / F18_HALF_LIFE_MIN)
    brain_mbq = INJECTED_MBQ * decay_factor(SCAN_START_MIN) * decay_during_scan * BRAIN_UPTAKE_FRACTION
    emitted_counts = brain_mbq * HEAD_TO_BRAIN_ACTIVITY * SENSITIVITY_CPS_PER_MBQ * SCAN_DURATION_MIN * 60.0
    return emitted_counts * ATTENUATION_SURVIVAL


@dataclass(frozen=True)
class ScannerPreset:
    """What a scanner changes in the simulated data."""

    psf_fwhm_mm: float  # effective resolution of the reconstructed image, modelled as a Gaussian on the truth
    full_dose_counts: float  # expected true counts of the whole volume at full dose
    osem_iterations: int
    osem_subsets: int
    background_fraction: float  # randoms + scatter as a fraction of the trues


SCANNERS: Mapping[str, ScannerPreset] = {
    # 3 mm: VRAIN separates 2.2 mm rods in a phantom; patient images lose some of that to motion and
    # unconverged OSEM. 4 x 21 OSEM is most of the way to convergence in this geometry (docs/SIMULATOR.md).
    # Scatter fraction 19 %, so scatter is 0.23 x trues; randoms bring the background to 0.25.
    "brain": ScannerPreset(psf_fwhm_mm=3.0, full_dose_counts=brain_full_dose_counts(),
                           osem_iterations=DEFAULT_OSEM_ITERATIONS, osem_subsets=DEFAULT_OSEM_SUBSETS,
                           background_fraction=0.25),
    "wholebody": ScannerPreset(psf_fwhm_mm=4.5, full_dose_counts=1.1e8, osem_iterations=4, osem_subsets=8,
                               background_fraction=0.25),
}

REGIMES = ("realistic", "legacy", "amyloid")
