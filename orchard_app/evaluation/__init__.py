"""Evaluation: metrics, figures and the run report."""
