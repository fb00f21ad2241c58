"""Evaluation: metrics and per-stage reports."""
