"""Evaluation: FID (fid.py), anomaly detection, reconstruction, plots."""
