"""Pictures: a grid of log-mel spectrograms (one row per group), and `save_figure`, how every picture is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from melody.audio import log_mel
from melody.io import atomic_path


def spectrogram_grid(rows: dict[str, list[tuple[str, np.ndarray]]], sample_rate: int, path: str | Path, dpi: int = 80) -> Path:
    """Save a picture (PNG, or JPEG by suffix): `rows[name]` is a list of `(caption, mono audio)`; each cell one log-mel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    cols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(names), cols, figsize=(4.2 * cols, 2.1 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(rows[name]):
                ax.axis("off")
                continue
            caption, audio = rows[name][c]
            mel = log_mel(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, n_mels=80).numpy()
            seconds = audio.shape[-1] / sample_rate
            ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=mel.max() - 11.0, vmax=mel.max(),
                      extent=(0.0, seconds, 0, mel.shape[0]))
            ax.set_title(_wrap(caption, 58), fontsize=6.5)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    return save_figure(fig, path, dpi)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write atomically (temp file, then rename; PNG, or JPEG by suffix) and close a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if fig.get_layout_engine() is None:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    return Path(path)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:2])
