"""Conditioners from pretrained models that users bring: joint text/audio embeddings that can stand in for MuLan.

MeLoDy's own conditioner is `melody.mulan.MuLan` (trained here). A conditioner in this package
offers the same two calls, `embed_text(texts)` and `embed_audio(wav, lengths)`, each returning unit
vectors `(b, d)`, so the same residual VQ can turn either into MuLan-style tokens.
"""

from melody.conditioners.clap import ClapConditioner, load_clap

__all__ = ["ClapConditioner", "load_clap"]
