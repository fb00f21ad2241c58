"""Baselines run in the same process as melody: a MusicLM-style hierarchy (`musiclm.py`, `codec.py`)."""
