"""The bank: its settings (settings.py), the FeatureBank with save and load
(feature_bank.py), and building one from a training folder (build.py)."""
