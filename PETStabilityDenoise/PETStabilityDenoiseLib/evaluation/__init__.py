"""Evaluation: scoring, the study of ``petstab evaluate`` (docs/EVALUATION.md), its report and plots, and the demo."""

from .report import run_evaluation
from .study import StudySettings, Subject, study_conditions

__all__ = ["StudySettings", "Subject", "run_evaluation", "study_conditions"]
