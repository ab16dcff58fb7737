"""The evaluation study of ``petstab evaluate``: the paper's comparison on simulated brain PET (docs/EVALUATION.md)."""

from .report import run_evaluation
from .study import StudySettings, Subject, study_conditions

__all__ = ["StudySettings", "Subject", "run_evaluation", "study_conditions"]
