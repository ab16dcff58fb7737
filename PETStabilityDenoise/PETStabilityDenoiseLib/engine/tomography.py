"""Slice-wise 2D parallel-beam PET: the projector and OSEM, on numpy arrays in (z, y, x) order.

Each axial slice is an independent 2D parallel-beam scan. The projector is a sparse system matrix shared by
all slices, so one sparse-dense product projects the whole volume at once, and its transpose is the exact
adjoint that OSEM needs (scikit-image's radon/iradon pair is slower and not an adjoint pair). Sinograms are
(z, angle, bin) arrays. The simulator acquires with this projector and ``petstab reconstruct`` inverts with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from .filters import psf_blur, sigma_voxels


def uniform_angles(n_angles: int) -> np.ndarray:
    """``n_angles`` projection angles spread uniformly over [0, pi), in radians."""
    return np.pi * np.arange(int(n_angles)) / int(n_angles)


@dataclass(frozen=True)
class ParallelBeamProjector:
    """2D parallel-beam projector: pixel-driven, linear interpolation between detector bins.

    ``matrix`` maps a flattened (ny, nx) slice to a flattened (n_angles, n_bins) sinogram; entries are path
    lengths in mm, so projecting an attenuation map in 1/mm gives line integrals. At angle theta a pixel centre
    (x, y), in mm from the slice centre along the array's x (column) and y (row) axes, falls on the detector
    coordinate u = x cos(theta) + y sin(theta); bin ``(n_bins - 1) / 2`` is u = 0.
    """

    image_shape: tuple[int, int]
    pixel_mm: float
    angles_rad: tuple[float, ...]
    n_bins: int
    bin_mm: float
    matrix: sp.csr_matrix

    @classmethod
    def build(
        cls,
        image_shape: Sequence[int],
        pixel_mm: float,
        n_angles: Optional[int] = None,
        n_bins: Optional[int] = None,
        bin_mm: Optional[float] = None,
        *,
        angles_rad: Union[Sequence[float], np.ndarray, None] = None,
    ) -> "ParallelBeamProjector":
        """System matrix for a slice of ``image_shape`` (ny, nx).

        Args:
            n_angles: that many angles uniform over [0, pi); or give ``angles_rad`` instead.
            n_bins: detector bins; default enough to cover the slice's diagonal.
            bin_mm: bin width; default the pixel size.
            angles_rad: the projection angles, in radians.

        Raises:
            ValueError: both or neither of ``n_angles`` and ``angles_rad``, or bins that do not cover the slice.
        """
        if n_angles is not None and angles_rad is None:
            theta = uniform_angles(n_angles)
        elif angles_rad is not None and n_angles is None:
            theta = np.asarray(angles_rad, dtype=float)
        else:
            raise ValueError("give either n_angles or angles_rad")
        ny, nx = (int(n) for n in image_shape)
        bin_mm = float(pixel_mm if bin_mm is None else bin_mm)
        if n_bins is None:
            n_bins = int(np.ceil(np.hypot(nx, ny) * pixel_mm / bin_mm)) + 2
        y = (np.arange(ny) - (ny - 1) / 2.0) * pixel_mm
        x = (np.arange(nx) - (nx - 1) / 2.0) * pixel_mm
        yy, xx = np.meshgrid(y, x, indexing="ij")
        # Detector coordinate of every pixel centre at every angle, in bins: shape (n_pixels, n_angles).
        u = (xx.reshape(-1, 1) * np.cos(theta) + yy.reshape(-1, 1) * np.sin(theta)) / bin_mm + (n_bins - 1) / 2.0
        lower = np.floor(u).astype(np.int32)
        w_upper = (u - lower).astype(np.float32)
        if lower.min() < 0 or lower.max() + 1 >= n_bins:
            raise ValueError(f"{n_bins} detector bins of {bin_mm:g} mm do not cover a {ny}x{nx} slice of "
                             f"{pixel_mm:g} mm pixels")
        n_angles = len(theta)
        ray0 = np.arange(n_angles, dtype=np.int32) * n_bins
        rows = np.stack([ray0 + lower, ray0 + lower + 1], axis=-1)
        area = np.float32(pixel_mm * pixel_mm / bin_mm)  # a pixel's footprint, so bins hold line integrals in mm
        vals = np.stack([(1.0 - w_upper) * area, w_upper * area], axis=-1)
        # Every pixel (column) has exactly two entries per angle, so the CSC arrays are built directly.
        n_pix = nx * ny
        indptr = np.arange(0, 2 * n_angles * n_pix + 1, 2 * n_angles, dtype=np.int64)
        csc = sp.csc_matrix((vals.ravel(), rows.ravel(), indptr), shape=(n_angles * n_bins, n_pix))
        return cls((ny, nx), float(pixel_mm), tuple(float(t) for t in theta), int(n_bins), bin_mm, csc.tocsr())

    @property
    def n_angles(self) -> int:
        return len(self.angles_rad)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return self.n_angles, self.n_bins

    def forward(self, volume: np.ndarray) -> np.ndarray:
        """Project every slice of a (nz, ny, nx) volume: (nz, n_angles, n_bins)."""
        cols = volume.reshape(volume.shape[0], -1).astype(np.float32, copy=False).T
        return np.ascontiguousarray((self.matrix @ cols).T).reshape(volume.shape[0], *self.sinogram_shape)

    def back(self, sinogram: np.ndarray) -> np.ndarray:
        """Adjoint of ``forward``: (nz, n_angles, n_bins) -> (nz, ny, nx)."""
        cols = sinogram.reshape(sinogram.shape[0], -1).astype(np.float32, copy=False).T
        return np.ascontiguousarray((self.matrix.T @ cols).T).reshape(sinogram.shape[0], *self.image_shape)


class ResolutionModel:
    """The scanner's PSF as an isotropic 3D Gaussian in image space: the system model becomes
    multiplicative x A (H x), H the blur. H is symmetric, so it is its own adjoint.

    Args:
        fwhm_mm: the PSF's full width at half maximum.
        voxel_mm_zyx: the PET grid's voxel size, (z, y, x).
        slice_shape: (ny, nx) of a slice.
    """

    def __init__(self, fwhm_mm: float, voxel_mm_zyx: Sequence[float], slice_shape: Sequence[int]) -> None:
        self.fwhm_mm, self.voxel_mm_zyx = float(fwhm_mm), tuple(float(v) for v in voxel_mm_zyx)
        self.slice_shape = tuple(int(n) for n in slice_shape)

    @property
    def sigma_zyx(self) -> tuple:
        return tuple(float(s) for s in sigma_voxels(self.fwhm_mm, self.voxel_mm_zyx))

    def image(self, volume: np.ndarray) -> np.ndarray:
        """H applied to a (nz, ny, nx) image: the simulator's PSF blur."""
        return psf_blur(volume, self.fwhm_mm, self.voxel_mm_zyx)

    def columns(self, columns: np.ndarray) -> np.ndarray:
        """H applied to an image in the data step's column layout, (ny * nx, nz)."""
        sigma_yxz = (*self.sigma_zyx[1:], self.sigma_zyx[0])
        volume = columns.reshape(*self.slice_shape, columns.shape[1])
        return ndimage.gaussian_filter(volume, sigma_yxz, mode="constant").reshape(columns.shape)


class _Subsets:
    """The data split into subsets of interleaved angles, in column layout: the volume as (pixels, nz) and each
    subset's sinogram as (rays, nz), with its rows of the system matrix and its sensitivity (PSF) A_s^T m_s."""

    def __init__(self, counts: np.ndarray, projector: ParallelBeamProjector, multiplicative: np.ndarray,
                 background: np.ndarray, n_subsets: int, resolution: Optional[ResolutionModel] = None) -> None:
        if n_subsets < 1 or projector.n_angles % n_subsets:
            raise ValueError(f"{projector.n_angles} angles do not split into {n_subsets} subsets")
        self.nz, self.image_shape = counts.shape[0], projector.image_shape
        self.resolution = resolution
        y, m, b = (np.ascontiguousarray(np.moveaxis(v.astype(np.float32, copy=False), 0, -1))
                   for v in (counts, multiplicative, background))  # (n_angles, n_bins, nz)
        self.parts = []
        for s in range(n_subsets):
            angles = np.arange(s, projector.n_angles, n_subsets)
            rows = (angles[:, None] * projector.n_bins + np.arange(projector.n_bins)).ravel()
            a_s = projector.matrix[rows]
            y_s, m_s, b_s = (v[angles].reshape(-1, self.nz) for v in (y, m, b))
            sens = self.blur(np.asarray(a_s.T @ m_s, dtype=np.float32))
            self.parts.append((a_s, a_s.T.tocsr(), y_s, m_s, b_s, sens))
        self.n_rays = projector.n_angles * projector.n_bins
        self.totals = y.reshape(self.n_rays, self.nz), m.reshape(self.n_rays, self.nz), b.reshape(self.n_rays, self.nz)

    def blur(self, columns: np.ndarray) -> np.ndarray:
        return columns if self.resolution is None else self.resolution.columns(columns)

    def to_columns(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image.reshape(self.nz, -1).T.astype(np.float32))

    def to_image(self, columns: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(columns.T).reshape(self.nz, *self.image_shape)


def _em_image(x: np.ndarray, part: tuple, data: _Subsets) -> np.ndarray:
    """One subset's EM image of the columns ``x``: x H^T A_s^T (m_s y_s / (m_s A_s H x + b_s)) / sensitivity_s,
    with H the resolution model (or none)."""
    a_s, a_s_t, y_s, m_s, b_s, sens = part
    expected = m_s * (a_s @ data.blur(x)) + b_s
    ratio = np.divide(y_s, expected, out=np.zeros_like(expected), where=expected > 0)
    return x * np.divide(data.blur(a_s_t @ (m_s * ratio)), sens, out=np.zeros_like(x), where=sens > 0)


def osem(
    counts: np.ndarray,
    projector: ParallelBeamProjector,
    multiplicative: np.ndarray,
    background: np.ndarray,
    n_iterations: int = 4,
    n_subsets: int = 8,
    progress: Optional[Callable[[int], None]] = None,
    resolution: Optional[ResolutionModel] = None,
) -> np.ndarray:
    """OSEM for the model counts ~ Poisson(multiplicative * A (H) x + background), all slices at once.

    ``multiplicative`` holds, per line of response, counts per unit activity x path length (attenuation,
    sensitivity, dose), so the image comes out in activity units. Subsets are interleaved angles. The update
    is multiplicative from a positive start, which keeps the image non-negative. ``progress`` is called with the
    number of iterations done after each one. ``resolution``, the scanner's PSF H, makes it OSEM with
    resolution modelling (a scanner's "PSF" reconstruction); None, as the simulator reconstructs, models none.
    """
    data = _Subsets(counts, projector, multiplicative, background, n_subsets, resolution)
    y, m, b = data.totals
    # Start from the uniform image whose projection holds the measured net counts.
    ones_proj = projector.matrix @ np.ones((projector.matrix.shape[1], 1), dtype=np.float32)
    start = np.maximum(y - b, 0.0).sum() / max(float((m * ones_proj).sum()), 1e-12)
    x = np.full((projector.matrix.shape[1], data.nz), start, dtype=np.float32)
    for iteration in range(n_iterations):
        for part in data.parts:
            x = _em_image(x, part, data)
        if progress is not None:
            progress(iteration + 1)
    return data.to_image(x)


def expected_counts(image: np.ndarray, projector: ParallelBeamProjector, multiplicative: np.ndarray,
                    background: np.ndarray, resolution: Optional[ResolutionModel] = None) -> np.ndarray:
    """The data model's mean: multiplicative x A (H) image + background, (nz, n_angles, n_bins); H the
    ``resolution`` model, if any."""
    blurred = image if resolution is None else resolution.image(image)
    return multiplicative * projector.forward(blurred) + background


def poisson_misfit(counts: np.ndarray, expected: np.ndarray) -> float:
    """The Poisson negative log-likelihood of ``counts`` given their ``expected`` values, up to a constant."""
    expected = np.maximum(expected.astype(np.float64), 1e-12)
    return float((expected - counts * np.log(expected)).sum())


def penalized_em(
    counts: np.ndarray,
    projector: ParallelBeamProjector,
    multiplicative: np.ndarray,
    background: np.ndarray,
    anchor: np.ndarray,
    beta: float,
    n_updates: int,
    n_subsets: int = 1,
    resolution: Optional[ResolutionModel] = None,
) -> np.ndarray:
    """The data step of half-quadratic splitting: EM updates tied to ``anchor`` by (beta / 2) ||x - anchor||^2.

    Starts from the anchor (clipped at 0). Each update is, for each of ``n_subsets`` subsets of interleaved angles,
    the subset's EM image x_em of the current x followed, per voxel, by the positive root of
    b x^2 + (s - b z) x - s x_em = 0 (De Pierro's surrogate), where z is the anchor, s = (H) A_s^T multiplicative
    the subset's sensitivity and b = beta / n_subsets its share of the penalty (ordered subsets, as OSEM). One
    subset is MLEM. ``beta`` 0 gives plain MLEM or OSEM; a large beta keeps the anchor. With a ``resolution``
    model H, the system model is multiplicative x A H. Arrays are (nz, ny, nx) images and (nz, n_angles, n_bins)
    sinograms; ``beta`` is in counts per activity^2.
    """
    if beta < 0 or n_updates < 0:
        raise ValueError(f"beta and n_updates must be >= 0; got {beta}, {n_updates}")
    data = _Subsets(counts, projector, multiplicative, background, n_subsets, resolution)
    anchor_columns = data.to_columns(np.maximum(anchor, 0.0))
    x = anchor_columns.copy()
    share = beta / n_subsets
    for _ in range(n_updates):
        for part in data.parts:
            x_em = _em_image(x, part, data)
            if beta == 0:
                x = x_em
                continue
            sensitivity = part[5]
            offset = anchor_columns - sensitivity / share
            x = 0.5 * (offset + np.sqrt(offset * offset + 4.0 * x_em * sensitivity / share))
    return data.to_image(x).astype(np.float32)
