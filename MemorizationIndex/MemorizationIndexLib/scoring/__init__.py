"""Scoring: synthetic scans against a bank (score.py) into typed results (results.py)."""
