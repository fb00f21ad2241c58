"""Training: one engine (`engine.py`) and one small file per stage."""
