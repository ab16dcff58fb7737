"""Volume nodes to SimpleITK images and back, with Slicer's geometry kept exact.

Slicer stores a volume as a (k, j, i) voxel array plus an IJK-to-RAS matrix,
optionally under a parent transform; ITK uses LPS. Converting here, rather
than through Slicer's file writers, works both in Slicer and with the
``slicer-core`` wheel, and lets the parent transform be applied without
touching the user's node.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ..errors import InputError

# RAS <-> LPS: flip the first two axes.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def world_ijk_to_ras(node) -> np.ndarray:
    """The node's IJK-to-RAS matrix in world coordinates, parent transforms included.

    Raises InputError for a non-linear (warping) transform, which no image grid can represent.
    """
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = _matrix_to_array(ijk_to_ras)
    transform = node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise InputError(f"'{node.GetName()}' is under a non-linear transform: harden the transform "
                             "(Data module, right-click > Harden transform) on a copy, then select the copy")
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        matrix = _matrix_to_array(to_world) @ matrix
    return matrix


def volume_array(node, name: str) -> np.ndarray:
    """The node's voxels as a (k, j, i) array (a view), after checking that it is a 3D scalar volume."""
    if node is None:
        raise InputError(f"no {name} volume selected")
    if node.GetImageData() is None:
        raise InputError(f"the {name} volume '{node.GetName()}' has no image data")
    array = slicer.util.arrayFromVolume(node)
    if array.ndim != 3:
        raise InputError(f"the {name} volume '{node.GetName()}' has {array.ndim} array dimensions; "
                         "a single-component 3D scalar volume is needed")
    return array


def node_to_image(node, name: str) -> sitk.Image:
    """A float32 SimpleITK copy of the node, in world (LPS) coordinates. The node is not changed."""
    array = volume_array(node, name)
    matrix = world_ijk_to_ras(node)
    axes = _RAS_TO_LPS @ matrix[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"the {name} volume '{node.GetName()}' has a zero voxel size")
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((axes / spacing).flatten().tolist())
    image.SetOrigin((_RAS_TO_LPS @ matrix[:3, 3]).tolist())
    return image


def add_volume_like(scene, reference, array: np.ndarray, name: str):
    """A new scalar volume node holding ``array``, with the reference's exact geometry and parent transform."""
    reference_shape = volume_array(reference, "reference").shape
    if array.shape != reference_shape:
        raise ValueError(f"array of shape {array.shape} does not match '{reference.GetName()}' {reference_shape}")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.CopyOrientation(reference)
    node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=np.float32))
    return node


def add_volume_from_image(scene, image: sitk.Image, name: str):
    """A new scalar volume node holding a SimpleITK image, with its geometry (LPS) as Slicer's RAS."""
    axes = _RAS_TO_LPS @ np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = axes
    ijk_to_ras[:3, 3] = _RAS_TO_LPS @ np.array(image.GetOrigin())
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, ijk_to_ras[row, column])
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(sitk.GetArrayViewFromImage(image), dtype=np.float32))
    return node
