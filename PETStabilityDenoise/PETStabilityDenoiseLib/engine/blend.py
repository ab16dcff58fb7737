"""The stability-map blend of METHOD.md §1 (Eq. 3 of the stability-map paper).

    S_norm = min(alpha * S / mean(S), 1)
    x      = S_norm * x0 + (1 - S_norm) * f(theta* | g)

The blend only needs three stored volumes, so re-blending at a new alpha is
cheap; this is what lets a slider update the image live. One fused, parallel
pass (numba) reads the three volumes once and writes both outputs into
caller-owned buffers, so repeated calls allocate nothing. Separate numpy
ufuncs would need five passes over memory and run about four times slower
(benchmarks/bench_engine.py measures the ratio to a plain copy).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

try:
    import numba
except ImportError:
    numba = None  # type: ignore[assignment]  # optional: the numpy path runs instead


def _blend_numpy(x0, net, stability, scale, out, stability_norm):
    np.multiply(stability, scale, out=stability_norm)
    np.minimum(stability_norm, np.float32(1.0), out=stability_norm)
    # x = f + S_norm * (x0 - f): the two-weight form with one multiply fewer.
    np.subtract(x0, net, out=out)
    out *= stability_norm
    out += net


if numba is not None:
    @numba.njit(parallel=True, fastmath=True, cache=True)
    def _blend_kernel(x0, net, stability, scale, out, stability_norm):  # pragma: no cover - compiled
        for i in numba.prange(x0.size):
            weight = min(stability[i] * scale, np.float32(1.0))
            stability_norm[i] = weight
            out[i] = net[i] + weight * (x0[i] - net[i])
else:
    _blend_kernel = _blend_numpy


def _flat_float32(array: np.ndarray, label: str) -> np.ndarray:
    if array.dtype != np.float32:
        raise ValueError(f"{label} must be float32; got {array.dtype}")
    return np.ascontiguousarray(array).reshape(-1)


def blend(
    x0: np.ndarray,
    network_output: np.ndarray,
    stability: np.ndarray,
    alpha: float,
    *,
    stability_mean: Optional[float] = None,
    out: Optional[np.ndarray] = None,
    stability_norm_out: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Blends the OSEM image ``x0`` and the DIP output, weighted by the stability map.

    Args:
        x0: the noisy input PET (OSEM), float32.
        network_output: the DIP output f(theta* | g), float32, same shape.
        stability: the stability map S (per-voxel std), float32, same shape.
        alpha: blending strength, >= 0. 0 gives the DIP output.
        stability_mean: the mean(S) that normalises S. ``None`` takes the mean
            over the whole array, as in the paper. The engine passes the mean
            over the head mask instead, so that alpha does not depend on how
            much air the field of view holds (see docs/DEFAULTS.md).
        out: optional C-contiguous float32 buffer for the blended image.
        stability_norm_out: optional C-contiguous float32 buffer for S_norm.

    Returns:
        ``(blended, stability_norm)``; these are ``out`` and
        ``stability_norm_out`` when those are given.
    """
    if not (x0.shape == network_output.shape == stability.shape):
        raise ValueError(
            f"blend needs volumes of one shape; got x0 {x0.shape}, "
            f"network output {network_output.shape}, stability {stability.shape}"
        )
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0; got {alpha}")
    if stability_mean is None:
        stability_mean = float(stability.mean(dtype=np.float64))
    if out is None:
        out = np.empty(x0.shape, dtype=np.float32)
    if stability_norm_out is None:
        stability_norm_out = np.empty(x0.shape, dtype=np.float32)
    for buffer, label in ((out, "out"), (stability_norm_out, "stability_norm_out")):
        if buffer.shape != x0.shape or buffer.dtype != np.float32 or not buffer.flags.c_contiguous:
            raise ValueError(f"{label} must be a C-contiguous float32 array of shape {x0.shape}")

    # A map that is zero everywhere (a network that never moved) carries no
    # instability: every voxel then takes the DIP output.
    scale = np.float32(alpha / stability_mean) if stability_mean > 0 else np.float32(0.0)
    _blend_kernel(
        _flat_float32(x0, "x0"),
        _flat_float32(network_output, "network_output"),
        _flat_float32(stability, "stability"),
        scale,
        out.reshape(-1),
        stability_norm_out.reshape(-1),
    )
    return out, stability_norm_out
