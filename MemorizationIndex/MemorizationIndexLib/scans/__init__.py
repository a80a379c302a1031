"""Reading scans: discovery (which files are volumes), DICOM, reading one volume, and
cutting it into canonical foreground slices. The names below are the package's API."""

from .discovery import find_scans, find_scans_required
from .reading import iter_scans, read_scan, read_scan_reporting
from .slicing import AXES, ReadOptions, scan_from_image
from .sources import ScanSource, ScanVolume, SkippedInput, SliceInfo

__all__ = [
    "AXES",
    "ReadOptions",
    "ScanSource",
    "ScanVolume",
    "SkippedInput",
    "SliceInfo",
    "find_scans",
    "find_scans_required",
    "iter_scans",
    "read_scan",
    "read_scan_reporting",
    "scan_from_image",
]
