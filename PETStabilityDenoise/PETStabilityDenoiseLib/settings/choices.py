"""Every choice list and every default that a user picks from, written once.

The CLI, the worker, the Slicer logic, the module panel and the batch script
build their options from these; a test fails if a list is written out anywhere
else. Imports nothing, so that the Slicer panel can show them before the
deep-learning stack is installed.
"""

from typing import Dict, Tuple

# Method -> the label the Slicer panel shows.
METHODS: Dict[str, str] = {"dip": "Conditional DIP (stability map)", "ddpm": "Diffusion model (DDPM)"}
DEFAULT_METHOD = "dip"

# Where the network runs; "auto" picks CUDA when there is a GPU.
DEVICES: Tuple[str, ...] = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"

# File formats of a run folder's volumes: one file each, or, with DICOM_FORMAT, one DICOM series folder each,
# derived from the input PET's DICOM series (which it needs).
FILE_FORMATS: Tuple[str, ...] = ("nii.gz", "nrrd", "mha")
DICOM_FORMAT = "dicom"
OUTPUT_FORMATS: Tuple[str, ...] = (*FILE_FORMATS, DICOM_FORMAT)
DEFAULT_OUTPUT_FORMAT = "nii.gz"

# SUV normalisations a PET DICOM series can be converted to before denoising: "bw", body weight (QIBA).
SUV_TYPES: Tuple[str, ...] = ("bw",)

# How long work reports progress: a terminal bar, JSON lines on stdout, or nothing.
PROGRESS_STYLES: Tuple[str, ...] = ("bar", "jsonl", "none")

# Stability map shown over the denoised PET -> the label the Slicer panel shows.
OVERLAYS: Dict[str, str] = {"stability": "S (stability)", "stability_norm": "S_norm (normalized)"}
DEFAULT_OVERLAY = "stability"

# "monai": MONAI's residual UNet (transposed convolutions, concatenated skips, instance norm);
# "gong": the Gong et al. (TMI 2019) style network of engine/network.py; "gong_halfres": the same
# with its first level at half resolution, which costs about a sixth as much on a CPU.
NETWORKS: Tuple[str, ...] = ("monai", "gong", "gong_halfres")
OPTIMIZERS: Tuple[str, ...] = ("lbfgs", "adam")
# The DIP network's input: the MR, the MR and the PET as two channels, or fixed noise.
INPUT_MODES: Tuple[str, ...] = ("mr", "mr+pet", "noise")

# What a trained network (the DDPM or its regression baseline) learns to output: the full-dose OSEM, which is
# noisy itself, or the PSF-blurred truth, which only a simulator has (the design study's choice, docs/DDPM.md),
# or the truth itself, unblurred: for a DDIP prior whose data step models the scanner's PSF (--psf-fwhm).
# And the training objectives: a diffusion model, a corrective diffusion model of a regression model's residual
# (CorrDiff), or the regression baseline itself.
TRAINING_TARGETS: Tuple[str, ...] = ("full_dose", "truth_blurred", "truth")
DEFAULT_TRAINING_TARGET = "truth_blurred"
TRAINING_OBJECTIVES: Tuple[str, ...] = ("diffusion", "corrective", "regression")
# The timesteps a diffusion model trains at: only those of the default sampling chain ("matched", the bundled
# denoiser's design, docs/DDPM.md), or all of them, for any chain (DDIP's prior, whose chain is its own).
TRAINING_SCHEDULES: Tuple[str, ...] = ("matched", "full")

# How ``petstab reconstruct`` reconstructs a sinogram file: OSEM, or DDIP (the diffusion prior, from OSEM's image).
# OSEM's defaults are the simulator's ``brain`` scanner preset (4 iterations of 21 subsets); the subsets must
# divide the sinogram's angles.
RECONSTRUCTION_METHODS: Tuple[str, ...] = ("osem", "ddip")
DEFAULT_RECONSTRUCTION_METHOD = "osem"
DEFAULT_OSEM_ITERATIONS = 4
DEFAULT_OSEM_SUBSETS = 21

# The blend's default strength for each method, chosen by measurement in the realistic simulation regime by one
# rule (most targets met, then the alpha nearest the paper's operating point, 0.6): DIP's in docs/DEFAULTS.md,
# the diffusion model's in docs/DDPM.md.
DEFAULT_ALPHAS: Dict[str, float] = {"dip": 0.3, "ddpm": 0.6}
# The default method's.
DEFAULT_ALPHA = DEFAULT_ALPHAS[DEFAULT_METHOD]
# DDIP's blend with its OSEM image, chosen by the same rule on the same tuning subjects for the bundled prior and
# DDIP's defaults (docs/RECONSTRUCTION.md; 0.1 with the former prior and the final data correction, 0.2 before).
DDIP_ALPHA = 0.2


__all__ = ["METHODS", "DEFAULT_METHOD", "DEVICES", "DEFAULT_DEVICE", "FILE_FORMATS", "DICOM_FORMAT",
           "OUTPUT_FORMATS", "DEFAULT_OUTPUT_FORMAT", "SUV_TYPES", "TRAINING_TARGETS", "DEFAULT_TRAINING_TARGET",
           "TRAINING_OBJECTIVES", "TRAINING_SCHEDULES", "PROGRESS_STYLES", "OVERLAYS", "DEFAULT_OVERLAY",
           "NETWORKS", "OPTIMIZERS", "INPUT_MODES", "RECONSTRUCTION_METHODS", "DEFAULT_RECONSTRUCTION_METHOD",
           "DEFAULT_OSEM_ITERATIONS", "DEFAULT_OSEM_SUBSETS", "DEFAULT_ALPHAS", "DEFAULT_ALPHA", "DDIP_ALPHA"]
