"""Evaluation metrics: feature statistics and distances (fid), the feature networks
(features), reconstruction error (reconstruction)."""
