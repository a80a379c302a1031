"""A scene set up as Slicer's application sets one up, for scripts and tests outside Slicer.

Inside Slicer use `slicer.mrmlScene` and `slicer.app.applicationLogic()` instead. Only what
the PyPI package `slicer-core` provides is used: the application logic with its colour
logic and default colour nodes, the slice orientation presets, and one slice logic per view
(each adds its slice node and slice composite node to the scene).
"""

from __future__ import annotations

import slicer
import vtk

DEFAULT_ORIENTATIONS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


def createSceneWithSliceViews(sliceViewNames=("Red", "Yellow", "Green")):
    """A scene with application logic, colours and slice logics. Returns (scene, appLogic);
    the slice logics live in the application logic."""
    scene = slicer.vtkMRMLScene()
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    appLogic.GetColorLogic().SetMRMLScene(scene)
    appLogic.GetColorLogic().AddDefaultColorNodes()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    sliceLogics = vtk.vtkCollection()
    appLogic.SetSliceLogics(sliceLogics)
    appLogic.SetViewLogics(vtk.vtkCollection())
    for name in sliceViewNames:
        sliceLogic = slicer.vtkMRMLSliceLogic()
        sliceLogic.SetMRMLApplicationLogic(appLogic)
        sliceLogic.SetMRMLScene(scene)
        sliceNode = sliceLogic.AddSliceNode(name)
        sliceNode.SetOrientation(DEFAULT_ORIENTATIONS.get(name, "Axial"))
        sliceNode.SetDimensions(256, 256, 1)
        sliceLogics.AddItem(sliceLogic)
    return scene, appLogic
