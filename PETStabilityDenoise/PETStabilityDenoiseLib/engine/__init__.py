"""The engine: the numerical work on arrays and images, with torch.

``dip``, ``network`` and ``stability`` fit the conditional DIP; ``ddpm/`` samples
the diffusion model; ``blend`` and ``filters`` are shared;
``tomography`` is the 2D projector and OSEM of the simulator and ``petstab reconstruct``; ``pipeline`` runs
either on SimpleITK images; ``run`` goes from input files to a run folder.
Never imports Slicer or Qt.
"""
