"""PETStabilityDenoise library: stability-map conditional DIP denoising of PET.

Importable without 3D Slicer. The numerical engine works on numpy arrays in
SimpleITK's (z, y, x) order; image I/O and geometry work on ``SimpleITK.Image``.
"""

__version__ = "0.1.0"
