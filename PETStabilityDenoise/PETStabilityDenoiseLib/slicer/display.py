"""How the results look in the slice views: PET colours and window, the stability overlay.

Only MRML display and slice-composite nodes are touched, so this works in
Slicer and with the ``slicer-core`` wheel alike (``setSliceViewerLayers``
needs the application).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

PET_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Rainbow2"
STABILITY_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"
# PET windows are set from a high percentile, not the maximum: one hot voxel
# (a bladder, an artefact) must not darken the whole brain.
WINDOW_PERCENTILE = 99.5


def _set_color(scene, display_node, color_node_id: str) -> None:
    if scene.GetNodeByID(color_node_id) is None:
        log.warning("Colour table %s is not in the scene; keeping the default", color_node_id)
        return
    display_node.SetAndObserveColorNodeID(color_node_id)


def show_as_pet(scene, node, array: np.ndarray) -> None:
    """PET colour table, window from 0 to the 99.5th percentile, no interpolation (quantitative display)."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    _set_color(scene, display, PET_COLOR_NODE_ID)
    upper = float(np.percentile(array, WINDOW_PERCENTILE))
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, upper if upper > 0 else 1.0)
    display.SetInterpolate(False)


def show_as_stability(scene, node, array: np.ndarray, normalized: bool) -> None:
    """Heat colour table; S_norm spans 0 to 1, S from 0 to its 99.5th percentile."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    _set_color(scene, display, STABILITY_COLOR_NODE_ID)
    display.AutoWindowLevelOff()
    upper = 1.0 if normalized else float(np.percentile(array, WINDOW_PERCENTILE))
    display.SetWindowLevelMinMax(0.0, upper if upper > 0 else 1.0)
    display.SetInterpolate(False)


def set_slice_layers(scene, background, foreground, opacity: float) -> None:
    """Background and foreground volumes and foreground opacity in every slice view."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"overlay opacity must be between 0 and 1; got {opacity}")
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(background.GetID() if background else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        composite.SetForegroundOpacity(opacity)
