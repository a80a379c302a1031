"""Calibration: the null of held-out training volumes (null.py) and the combination of the
stage scores into the statistic it calibrates (combination.py)."""
