"""The bundled tiny model end to end (melody/bundled/): the DPD on music it never saw, and `melody generate`
with no bundle given, as a newcomer runs it.

The fresh pieces are `test_bundled_semantic`'s (one new piece per style, seed 12345, not a corpus
seed); the figures in the comments were measured on them.
"""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from test_bundled_semantic import pieces  # noqa: F401 (the fixture)
from test_semantic_stages import run_ok

from melody.bundled import BUNDLE
from melody.eval.metrics import mel_distance
from melody.pipeline import MeLoDy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SECONDS = 4.0


@pytest.fixture(scope="module")
def melody():
    return MeLoDy.from_pretrained(BUNDLE)


@torch.no_grad()
def test_bundled_dpd_turns_a_new_pieces_tokens_back_into_that_piece(pieces, melody):  # noqa: F811
    _, audio = pieces
    rate = melody.vae.cfg.sample_rate
    n = round(SECONDS * rate)
    clips = audio[:, :n].float()
    made = []
    for i in range(len(clips)):
        tokens = melody.tokenizer.tokens(clips[i:i + 1])
        heard = melody.mulan.tokens_from_audio(clips[i:i + 1])  # the piece's own sound, for a DPD that hears MuLan
        latents = melody.latents(melody.dpd, tokens, SECONDS, melody.cfg.dpd.steps, melody.cfg.dpd.guidance, seed=i,
                                 mulan=heard)
        made.append(melody.vae.decode_latents(latents, n)[0, 0])
    made = torch.stack(made)
    k = len(clips)
    own = mel_distance(made, clips, rate)
    other = mel_distance(made, clips.roll(k // 2, 0), rate)
    # measured: 0.87 to its own piece, 1.54 to another (11 pieces, 4 s, 5 steps, hearing each piece's MuLan tokens);
    # its own is closer for 11 of 11 (the DPD bundled before the MuLan condition: 0.94, 1.57, 10 of 11)
    assert float(own.mean()) < 0.85 * float(other.mean()), (own, other)
    assert float((own < other).float().mean()) >= 0.8, (own, other)


def test_generate_with_the_bundled_model_writes_two_seconds_of_music(tmp_path):
    out = tmp_path / "music.wav"
    run_ok("generate", "an upbeat funk groove with slap bass and drums", "--duration", "2", "--out", str(out))
    audio, rate = sf.read(out)
    assert rate == 24_000 and audio.shape == (48_000,)
    rms_db = 20 * np.log10(np.sqrt(np.mean(audio ** 2)) + 1e-12)
    assert -40 < rms_db < -3, rms_db  # music, not silence and not clipping noise
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["forward_passes"]["semantic_lm"] == 50 and record["forward_passes"]["vae"] == 1
