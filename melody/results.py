"""What a generation leaves on disk: the audio, its JSON sidecar (prompt, seed, settings, forward passes and
seconds per stage) and optionally a spectrogram picture; shared by the CLI and the demo server."""

from __future__ import annotations

from pathlib import Path


def write_result(out: Path, audio, rate: int, record: dict, plot: bool) -> list[Path]:
    """The audio (atomically), its JSON sidecar and optionally a spectrogram, beside each other."""
    from melody.audio import save_audio
    from melody.io import write_json_atomic

    paths = [save_audio(out, audio, rate), write_json_atomic(out.with_suffix(".json"), record)]
    if plot:
        from melody.data.plots import spectrogram_grid

        paths.append(spectrogram_grid({"": [(record.get("prompt") or out.name, audio.mean(0))]}, rate, out.with_suffix(".png")))
    return paths


def generation_record(model, output, row: int = 0, **fields) -> dict:
    """The sidecar of row `row` of a generation: `fields` (prompt, seed, ...) + its tempo fit where one ran, rate,
    forward passes, seconds, version, settings."""
    from melody import __version__

    fit = getattr(output, "tempo_fit", None)
    if fit is not None and fit[row] is not None:
        fields["tempo_fit"] = fit[row]
    return {**fields, "sample_rate": output.sample_rate, "forward_passes": output.forward_passes,
            "seconds": {k: round(v, 4) for k, v in output.seconds.items()}, "melody": __version__,
            "config": {"dpd": {"steps": model.cfg.dpd.steps, "guidance": model.cfg.dpd.guidance,
                               "precision": model.cfg.dpd.precision, "compile": model.cfg.dpd.compile},
                       "semantic_lm": {"guidance": model.cfg.semantic_lm.guidance,
                                       "temperature": model.cfg.semantic_lm.temperature,
                                       "precision": model.cfg.semantic_lm.precision,
                                       "compile": model.cfg.semantic_lm.compile}}}
