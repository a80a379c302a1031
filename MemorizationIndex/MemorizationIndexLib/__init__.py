"""MemorizationIndex engine: plain Python, no Qt or Slicer imports.

Builds a feature bank from training MRI with MRI-CORE's encoder and scores
synthetic volumes with a calibrated Memorization Index (MI) and the
Overfit/Novelty Index (ONI).
"""

__version__ = "0.1.0"
