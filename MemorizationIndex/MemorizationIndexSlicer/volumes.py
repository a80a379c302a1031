"""Volume nodes and the engine's images: both ways, and volumes loaded from their source.

A scored volume node goes to the child process as a file (NRRD, the node's voxels and
geometry exactly); a matched training volume comes back as a node read by the engine's own
reader, so the node holds exactly the voxels and canonical (LPS) geometry that were encoded.
"""

from __future__ import annotations

import os

import numpy as np
import slicer
import slicer.util
import vtk

from MemorizationIndexSlicer import engine
from MemorizationIndexSlicer.placement import LPS_TO_RAS

# Node attributes that tie nodes made here to what they show (kept with a saved scene).
ATTR_ROLE = "MemorizationIndex.Role"
ATTR_SOURCE = "MemorizationIndex.Source"
ATTR_SERIES = "MemorizationIndex.SeriesUID"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr", ".dcm")


def vtkMatrix(array4x4):
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array4x4[r][c]))
    return matrix


def numpyMatrix(matrix):
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volumeDirectionLPS(volumeNode):
    """3x3 IJK-to-LPS direction matrix of a volume node (columns: i, j, k axes)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(matrix)
    return LPS_TO_RAS @ numpyMatrix(matrix)[:3, :3]


def canonicalDirection(directionLPS):
    """The direction the engine's reorientation (DICOMOrient to LPS) gives a volume."""
    import SimpleITK as sitk

    probe = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    probe.SetDirection([float(x) for x in np.asarray(directionLPS, float).ravel()])
    return np.array(sitk.DICOMOrient(probe, "LPS").GetDirection()).reshape(3, 3)


def imageFromVolumeNode(volumeNode):
    """A SimpleITK image (LPS geometry) with the voxels of a volume node (its local frame)."""
    import SimpleITK as sitk

    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("The volume node holds no image data.")
    voxels = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    image = sitk.GetImageFromArray(voxels, isVector=voxels.ndim == 4)
    image.SetSpacing([float(s) for s in volumeNode.GetSpacing()])
    image.SetOrigin([float(x) for x in LPS_TO_RAS @ np.array(volumeNode.GetOrigin())])
    image.SetDirection([float(x) for x in volumeDirectionLPS(volumeNode).ravel()])
    return image


def writeVolumeNode(volumeNode, path):
    """Write a volume node's voxels and geometry to a file the child process reads."""
    import SimpleITK as sitk

    sitk.WriteImage(imageFromVolumeNode(volumeNode), str(path), useCompression=False)
    return str(path)


def ijkToRASFromImage(image):
    """4x4 IJK-to-RAS matrix of a SimpleITK image."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return matrix


def volumeNodeFromImage(scene, image, name, volumeNode=None):
    """Put a SimpleITK image into a (new or given) scalar volume node with display nodes."""
    import SimpleITK as sitk

    if volumeNode is None:
        volumeNode = scene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name)
        )
    volumeNode.SetIJKToRASMatrix(vtkMatrix(ijkToRASFromImage(image)))
    slicer.util.updateVolumeFromArray(volumeNode, sitk.GetArrayFromImage(image))
    if volumeNode.GetDisplayNode() is None:
        volumeNode.CreateDefaultDisplayNodes()
    return volumeNode


def shortName(path):
    """A volume's file or folder name without the image suffix, for tables and labels."""
    base = os.path.basename(os.path.normpath(str(path)))
    for suffix in IMAGE_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def findLoadedVolume(scene, path, seriesUid=""):
    """The volume node this module loaded from (path, series UID), or None."""
    key = (str(path), seriesUid or "")
    className = "vtkMRMLScalarVolumeNode"
    for i in range(scene.GetNumberOfNodesByClass(className)):
        candidate = scene.GetNthNodeByClass(i, className)
        if (candidate.GetAttribute(ATTR_SOURCE), candidate.GetAttribute(ATTR_SERIES) or "") == key:
            return candidate
    return None


def loadVolume(scene, path, seriesUid="", role="match", name=None):
    """Read a scan with the engine's reader into a new node tagged with where it came from."""
    if not os.path.exists(str(path)):
        raise engine.inputError(
            f"{path} is not there any more, so the matched volume cannot be shown "
            "(was the training folder moved?)."
        )
    image = engine.readCanonicalImage(path, seriesUid)
    node = volumeNodeFromImage(scene, image, name or f"{role}: {shortName(path)}")
    node.SetAttribute(ATTR_ROLE, role)
    node.SetAttribute(ATTR_SOURCE, str(path))
    node.SetAttribute(ATTR_SERIES, seriesUid or "")
    return node
