"""The engine: the numerical work on arrays and images, with torch.

``dip``, ``network`` and ``stability`` fit the conditional DIP; ``ddpm/`` samples
the diffusion model; ``blend`` and ``filters`` are shared; ``pipeline`` runs
either on SimpleITK images; ``run`` goes from input files to a run folder.
Never imports Slicer or Qt.
"""
