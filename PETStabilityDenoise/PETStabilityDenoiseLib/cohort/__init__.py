"""Cohorts: many subjects denoised into one folder, one after another or as Ray tasks (``petstab batch``).

``table`` reads and checks the cohort file; ``tasks`` is one subject's unit of work and outcome;
``schedulers`` runs the tasks, serially or on Ray; ``batch`` runs a cohort: resume, summary, interrupt.
"""
