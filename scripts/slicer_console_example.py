"""PETStabilityDenoise from Slicer's Python console: a background run with progress, then re-blending.

Paste it into the console, or run ``exec(open("/path/to/slicer_console_example.py").read())``.
It uses the volumes named PET_NAME and MR_NAME in the scene. If they are not there, it loads the
bundled sample case of those names. The run goes on in the background, so Slicer stays usable.
``logic.cancel()`` stops it, and nothing is added to the scene.
"""

import os

import slicer

from PETStabilityDenoise import PETStabilityDenoiseLogic

PET_NAME = "PETStabilitySample_PET"  # set to your own volumes' names
MR_NAME = "PETStabilitySample_MR"
SAMPLE_DIR = os.path.join(os.path.dirname(slicer.modules.petstabilitydenoise.path), "PETStabilityDenoiseLib", "data", "sample")


def getOrLoadVolume(name):
    """The scene's volume called ``name``, or the bundled sample file of that name, loaded."""
    node = slicer.mrmlScene.GetFirstNodeByName(name)
    return node or slicer.util.loadVolume(os.path.join(SAMPLE_DIR, name + ".nrrd"))


def onProgress(report):
    print(f"epoch {report.epoch}/{report.epochs}  loss {report.loss:.4g}  about {report.eta_s:.0f} s left")


def onFinished(handle):
    """Called on Slicer's main thread when the run ends, however it ends."""
    global result
    if handle.state != "succeeded":
        print(f"Run {handle.state}: {handle.error}")
        return
    result = handle.result
    # Re-blending is instant and needs no new run: it rewrites the denoised node's voxels in place.
    logic.setAlpha(result, 0.4)
    logic.showResult(result, overlay="stability", opacity=0.4)
    print(f"Done: {result.denoisedNode.GetName()} (alpha {result.alpha}). Try logic.setAlpha(result, 1.0).")


pet = getOrLoadVolume(PET_NAME)
mr = getOrLoadVolume(MR_NAME)
logic = PETStabilityDenoiseLogic()
if logic.ensureDependencies():  # asks before installing any missing Python package
    handle = logic.process(pet, mr, preset="fast", alpha=0.3, wait=False, progress=onProgress, finished=onFinished,
                           device="auto")
    print("Denoising in the background. To stop it: logic.cancel()")
