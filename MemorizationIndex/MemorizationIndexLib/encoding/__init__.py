"""Encoding: MRI-CORE's network (vit.py), its checkpoint (checkpoint.py), preprocessing,
the Encoder object (encoder.py) and the features of every kept slice of a set of scans
(features.py)."""
