"""The module's self-test (Slicer's "Reload and Test"), run by the ScriptedLoadableModuleTest in the module file."""

from __future__ import annotations

from pathlib import Path


def denoise_the_sample(test, logic, resources: Path) -> None:
    """Sample PET/MR in, four output nodes on the PET's grid out; alpha 0 gives the network output.

    Args:
        test: the running ScriptedLoadableModuleTest (its assertions and ``delayDisplay``).
        logic: the module's logic.
        resources: the module's Resources folder.
    """
    import numpy as np
    import SampleData
    import slicer
    import vtk

    from .application import SAMPLE_NAME, register_sample_data
    from .install import missing_packages

    missing = missing_packages(resources / "requirements.txt")
    if missing:
        # A test never installs anything: where torch or the others are absent (Slicer's build machines), skip.
        test.skipTest(f"PETStabilityDenoise's self-test needs {', '.join(missing)}, which are not installed; "
                      "install them with the module's Apply button (it asks first), then run the test again")
    test.delayDisplay("Starting the test")
    register_sample_data(resources)
    petNode, mrNode = SampleData.downloadSamples(SAMPLE_NAME)
    test.delayDisplay("Loaded the sample PET/MR case")

    result = logic.process(petNode, mrNode, preset="tiny", wait=True)
    test.delayDisplay("Denoising finished")

    petMatrix = vtk.vtkMatrix4x4()
    petNode.GetIJKToRASMatrix(petMatrix)
    outputs = [result.denoisedNode, result.networkOutputNode, result.stabilityNode, result.normalizedStabilityNode]
    for node in outputs:
        test.assertIsNotNone(node)
        test.assertIs(node.GetScene(), slicer.mrmlScene)
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix),
                                   slicer.util.arrayFromVTKMatrix(petMatrix), atol=1e-6)
        test.assertEqual(node.GetImageData().GetDimensions(), petNode.GetImageData().GetDimensions())
        test.assertTrue(np.isfinite(slicer.util.arrayFromVolume(node)).all(), node.GetName())

    logic.setAlpha(result, 0)
    networkOutput = slicer.util.arrayFromVolume(result.networkOutputNode)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.denoisedNode), networkOutput)
    logic.setAlpha(result, 3)
    test.assertFalse(np.array_equal(slicer.util.arrayFromVolume(result.denoisedNode), networkOutput))
    test.delayDisplay("Test passed")
