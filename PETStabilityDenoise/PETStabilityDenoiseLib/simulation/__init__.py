"""Brain FDG PET/MR simulator: BrainWeb labels -> truth, T1-like MR, OSEM at several doses, evaluation masks.

``phantom`` and ``acquisition`` work on numpy arrays; ``case`` wraps them into SimpleITK images.
See docs/SIMULATOR.md for the model and its calibration.
"""

from .case import (
    DEFAULT_DOSES,
    SimulatedCase,
    SimulationConfig,
    bundled_labels_path,
    dose_label,
    simulate_case,
    simulation_config,
)

__all__ = ["DEFAULT_DOSES", "SimulatedCase", "SimulationConfig", "bundled_labels_path", "dose_label", "simulate_case",
           "simulation_config"]
