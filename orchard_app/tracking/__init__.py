"""Tracking and provenance: run directory (lock, provenance.json), logging, MLflow."""
