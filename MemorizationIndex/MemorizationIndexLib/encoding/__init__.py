"""Encoding: MRI-CORE's network (vit.py), its checkpoint (checkpoint.py), LiteMedSAM's
TinyViT (tinyvit.py) and its weights (litemedsam.py), which encoder a run uses (choice.py),
preprocessing, the Encoder object (encoder.py) and the features of every kept slice of a
set of scans (features.py)."""
