"""The bundled `tiny` model: one folder per stage, each as its training run exported it
(`<stage>.safetensors` + `config.json`), trained on the built-in corpus. `melody/bundled/<stage>/README`
-style provenance (the command, steps, measured figures) lives in docs/."""

from __future__ import annotations

from pathlib import Path

BUNDLE = Path(__file__).resolve().parent


def bundled(stage: str) -> Path:
    """The folder of a bundled stage, e.g. `bundled("vae")`, loadable with `melody.checkpoint.load_model`."""
    return BUNDLE / stage
