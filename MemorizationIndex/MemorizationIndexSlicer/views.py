"""Slice views: the overlay of a match on its synthetic slice, side by side, rendering.

Everything goes through MRML nodes (slice nodes, slice composite nodes, the layout node)
and the application logic's slice logics, so it runs on slicer.mrmlScene in Slicer and on a
slicer-core scene outside it (headless.py).
"""

from __future__ import annotations

import logging

import numpy as np
import slicer

from MemorizationIndexSlicer import engine

ORIENTATION_OF_AXIS = {"axial": "Axial", "coronal": "Coronal", "sagittal": "Sagittal"}
ATTR_SHOWN = "MemorizationIndex.ShownPlane"  # slice node: which volume and axis it was fit to


def sliceNode(scene, viewName):
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
        if node.GetLayoutName() == viewName:
            return node
    return None


def sliceCompositeNode(scene, viewName):
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if node.GetLayoutName() == viewName:
            return node
    return None


def sliceLogic(appLogic, viewName):
    if appLogic is None:
        return None
    return appLogic.GetSliceLogicByLayoutName(viewName)


def showLayers(scene, appLogic, viewName, background, foreground, opacity, axis, centreRAS):
    """Background and foreground volumes of one view, its plane the background volume's own
    slice plane nearest the engine's axis (no oblique reslicing of an oblique volume),
    centred on centreRAS. The field of view is fit only when the view starts showing another
    volume or axis, so stepping through copies keeps the user's zoom."""
    composite = sliceCompositeNode(scene, viewName)
    node = sliceNode(scene, viewName)
    if composite is None or node is None:
        logging.warning(
            "MemorizationIndex: there is no %s slice view to show the match in.", viewName
        )
        return
    backgroundID = background.GetID() if background else None
    shown = f"{backgroundID}|{axis}"
    refit = (
        node.GetAttribute(ATTR_SHOWN) != shown or composite.GetBackgroundVolumeID() != backgroundID
    )
    composite.SetBackgroundVolumeID(backgroundID)
    composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
    composite.SetForegroundOpacity(float(opacity))
    if refit:
        # The named orientation first (its normal picks the volume axis), then the
        # volume's own plane closest to it: the engine's slices are the volume's slices.
        node.SetOrientation(ORIENTATION_OF_AXIS[axis])
        if background is not None:
            node.RotateToVolumePlane(background)
        node.SetAttribute(ATTR_SHOWN, shown)
        logic = sliceLogic(appLogic, viewName)
        if logic is not None:
            logic.FitSliceToBackground()
    node.JumpSliceByCentering(*centreRAS)


def jumpAllSlices(scene, centreRAS):
    slicer.vtkMRMLSliceNode.JumpAllSlices(
        scene, *centreRAS, slicer.vtkMRMLSliceNode.CenteredJumpSlice
    )


def setForegroundOpacity(scene, viewName, opacity):
    composite = sliceCompositeNode(scene, viewName)
    if composite is not None:
        composite.SetForegroundOpacity(float(opacity))


def setSideBySideLayout(scene, sideBySide, previousLayout=None):
    """Switch the layout node to side by side, or back to `previousLayout` (default: one
    Red view). Returns the arrangement in use before the switch."""
    layoutNode = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layoutNode is None:
        return previousLayout
    sideBySideLayout = slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    before = layoutNode.GetViewArrangement()
    if sideBySide:
        if before != sideBySideLayout:
            previousLayout = before
        layoutNode.SetViewArrangement(sideBySideLayout)
    elif before == sideBySideLayout:
        layoutNode.SetViewArrangement(
            previousLayout or slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView
        )
    return previousLayout


def linkViews(scene, viewNames, linked):
    for name in viewNames:
        composite = sliceCompositeNode(scene, name)
        if composite is not None:
            composite.SetLinkedControl(bool(linked))


def renderSliceView(appLogic, viewName="Red"):
    """The view's blended slice as uint8 RGBA [rows, cols, 4], top row first (no OpenGL: the
    slice logic's image data connection is the blend Slicer's view shows)."""
    from vtk.util import numpy_support

    logic = sliceLogic(appLogic, viewName)
    if logic is None:
        raise ValueError(f"No slice logic for the {viewName} view in this application logic.")
    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    cols, rows, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return pixels.reshape(rows, cols, -1)[::-1].copy()


def savePNG(rgba, path):
    """Write a rendered view (RGBA or gray) to PNG with the engine's dependency-free encoder."""
    image = np.asarray(rgba)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    with open(path, "wb") as f:
        f.write(engine.pngBytes(image))
    return path
