"""What the module panel needs that does not touch Qt, kept here so that it is tested without Slicer.

- the Enum types of the panel's choice fields, built from ``settings/choices.py``,
  which Slicer's parameterNodeWrapper binds to combo boxes (item text from ``label()``);
- the translation of the panel's fields into engine settings;
- how long a run has left, for people;
- forgetting the library's modules, so that the module's Reload picks up edits.

Imports only the torch-free settings, so the panel opens before anything is installed.
"""

from __future__ import annotations

import enum
import math
import sys
from typing import Dict, List, Mapping, Type

from ..settings import DEVICES, METHODS, OVERLAYS, PRESET_NAMES

_LABELS: Dict[type, Mapping[str, str]] = {}

# The module's help and acknowledgement, shown by Slicer above the panel ({readme}: the documentation's URL).
HELP_TEXT = """
Denoises a PET volume with a <b>stability-map conditional deep image prior (DIP)</b>.
A 3D U-Net that takes the subject's MR (registered to the PET) is fitted to the noisy PET.
The spread of its outputs over the late epochs, the <i>stability map</i>, marks where the fit is unreliable;
the denoised image blends the network output and the original PET voxel by voxel, weighted by that map.
The <b>alpha</b> slider sets the blend and updates the image at once, with no new fit; choosing a method
sets it to that method's default, chosen by measurement.
No training data is needed. Research software, not for clinical use.
The other method, <b>Diffusion model (DDPM)</b>, runs a bundled 3D U-Net, then samples a conditional 3D diffusion
model of what the U-Net gets wrong several times: the mean of the samples is the network output and their spread
the stability map; it needs the MR.
See the <a href="{readme}">documentation</a>.
<p>Methods:</p>
<ul>
<li>Stability-map conditional DIP: "a method for making a deep learning solution more reliable", applied to the
conditional deep image prior for brain [18F]FDG PET denoising (stability map from intermediate network outputs,
blend weighted by the map; the paper's operating point is alpha 0.6).</li>
<li>Conditional DIP: K. Gong, C. Catana, J. Qi, Q. Li, "PET image reconstruction using deep image prior",
IEEE Transactions on Medical Imaging 38(7):1655-1665, 2019.</li>
<li>Deep image prior: D. Ulyanov, A. Vedaldi, V. Lempitsky, "Deep image prior", International Journal of
Computer Vision 128:1867-1888, 2020.</li>
<li>3D diffusion model for PET denoising: B. Yu, S. Ozdemir, Y. Dong, W. Shao, T. Pan, K. Shi, K. Gong,
"Robust whole-body PET image denoising using 3D diffusion models: evaluation across various scanners, tracers,
and dose levels", European Journal of Nuclear Medicine and Molecular Imaging, 2025. Sampled with DDIM:
J. Song, C. Meng, S. Ermon, "Denoising diffusion implicit models", ICLR 2021. The diffusion of a U-Net's residual
(CorrDiff): M. Mardani et al., "Residual corrective diffusion modeling for km-scale atmospheric downscaling",
Communications Earth &amp; Environment, 2025, doi:10.1038/s43247-025-02042-5.</li>
</ul>
"""
ACKNOWLEDGEMENT_TEXT = """
The sample data and the simulator use the BrainWeb anatomical model of subject 04:
B. Aubert-Broche, A. C. Evans, L. Collins, "A new improved version of the realistic digital brain phantom",
NeuroImage 32(1):138-145, 2006. The networks are MONAI's 3D U-Net and DiffusionModelUNet (Project MONAI),
run with PyTorch.
"""


class PanelChoice(enum.Enum):
    """A choice list as an Enum: members named and valued after the setting, shown by :meth:`label`.

    Slicer's parameterNodeWrapper stores a member by its name, so a scene saved
    with the former string fields ("dip", "fast", ...) reads back unchanged.
    """

    def label(self) -> str:
        """The text the combo box shows (parameterNodeWrapper's QComboBoxToEnumConnector calls this)."""
        return _LABELS.get(type(self), {}).get(self.value, self.value)


def _choice_enum(name: str, labels: Mapping[str, str]) -> Type[PanelChoice]:
    # Enum's functional API, on a member-less subclass so that the members have label().
    choice: Type[PanelChoice] = PanelChoice(name, [(value, value) for value in labels])  # type: ignore[call-arg,assignment]
    choice.__module__ = __name__
    _LABELS[choice] = labels
    return choice


Method = _choice_enum("Method", METHODS)
Preset = _choice_enum("Preset", {name: name for name in PRESET_NAMES})
Device = _choice_enum("Device", {name: name for name in DEVICES})
Overlay = _choice_enum("Overlay", OVERLAYS)


def engine_settings(panel) -> dict:
    """The engine settings of the panel's chosen method, from its parameter node (or any object with its fields).

    The DIP schedule's 0 (shown as "preset") becomes None: the preset's value. The DDPM samples with its
    default steps, the only ones the bundled model was trained for.
    """
    shared = {"device": panel.device.value, "seed": panel.seed}
    if panel.method.value == "ddpm":
        return {"samples": panel.samples, **shared}
    return {"epochs": panel.epochs or None, "interval": panel.interval or None, "start": panel.start or None,
            **shared}


def format_duration(seconds: float) -> str:
    """A duration for people: "45 s", "1 min 20 s", "2 h 5 min"; "unknown" when not finite."""
    if not math.isfinite(seconds):
        return "unknown"
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {whole} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def forget_library_modules(package: str = __name__.split(".")[0]) -> List[str]:
    """Drops ``package`` and its submodules from ``sys.modules``; returns their names.

    The module's Reload re-runs the module file, whose imports then load the
    library afresh. Dropping is simpler than ``importlib.reload`` in dependency
    order, and works on Slicer 5.8's Python 3.9 and later versions' 3.12 alike.
    """
    names = sorted(name for name in sys.modules if name == package or name.startswith(package + "."))
    for name in names:
        del sys.modules[name]
    return names
