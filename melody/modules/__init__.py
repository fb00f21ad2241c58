"""Reusable blocks, apart from the stage models that assemble them (audiocraft's `modules/`)."""
