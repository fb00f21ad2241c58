"""Captions: true to their attributes for all three sources, and varied in shape."""

import numpy as np
import pytest

from melody.data.synth import captions as cap
from melody.data.synth.arrange import STYLES, arrange
from melody.data.synth.captions import caption_mentions, make_caption

SCORE = {
    "style": "choral", "tempo_bpm": 72.0, "key": "D", "mode": "major", "time_signature": "3/4", "dynamics": "soft",
    "instruments": ["choir"], "gm_programs": [52], "parts": ["melody", "harmony"], "mood": "calm",
    "composer": "Mozart", "title": "Ave verum corpus",
}  # fmt: skip
RECORDING = {"style": None, "tempo_bpm": 127.6, "key": "D", "mode": "minor", "instruments": [], "loudness_lufs": -9.0}


def _captions(attributes: dict, n: int = 40) -> list[str]:
    return [make_caption(attributes, np.random.default_rng(seed)) for seed in range(n)]


@pytest.mark.parametrize("style", STYLES)
def test_procedural_captions_mention_style_tempo_key_and_an_instrument(style):
    for seed in range(4):
        attributes = arrange(style, np.random.default_rng(seed), duration=2.0).attributes
        for caption in _captions(attributes, 10):
            assert caption_mentions(caption, attributes), caption
            assert "None" not in caption


def test_score_captions_mention_their_facts_and_sometimes_the_composer():
    captions = _captions(SCORE)
    assert all(caption_mentions(c, SCORE) for c in captions)
    assert any("Mozart" in c for c in captions) and any("Ave verum corpus" in c for c in captions)
    bare = {**SCORE, "composer": None, "title": None, "instruments": [], "style": "renaissance"}
    assert all(caption_mentions(c, bare) and "None" not in c for c in _captions(bare))


def test_recording_captions_say_only_what_was_measured():
    captions = _captions(RECORDING)
    style_words = {w for phrases in cap._STYLE_PHRASES.values() for p in phrases for w in p.lower().split()}
    style_words -= {"piece", "of", "music", "track"}  # shared with the recording nouns
    for caption in captions:
        assert caption_mentions(caption, RECORDING), caption
        assert "128" in caption and any(w in caption for w in ("about", "around", "roughly"))
        assert not style_words & set(caption.lower().replace(",", " ").replace(".", " ").split()), caption
    assert any("loud" in c for c in captions)


def test_missing_facts_are_left_out():
    nothing = {"style": None, "tempo_bpm": None, "key": None, "mode": None, "instruments": []}
    for caption in _captions(nothing, 20):
        assert caption and "None" not in caption and caption_mentions(caption, nothing)


def test_caption_mentions_catches_wrong_facts():
    attributes = arrange("jazz", np.random.default_rng(0), duration=2.0).attributes
    caption = make_caption(attributes, np.random.default_rng(0))
    assert caption_mentions(caption, attributes)
    tempo = attributes["tempo_bpm"]
    assert not caption_mentions(caption, {**attributes, "tempo_bpm": tempo + 1})
    assert not caption_mentions(caption, {**attributes, "style": "rock"})
    assert not caption_mentions(caption, {**attributes, "mode": "lydian"})
    assert not caption_mentions(caption, {**attributes, "instruments": ["bagpipes"]})
    facts = {"style": "jazz", "tempo_bpm": 120.0, "key": "E", "mode": "minor"}
    assert not caption_mentions("A jazz piece in the minor key at 120 BPM", facts)  # "e minor" inside "the minor"
    assert caption_mentions("A jazz piece in E minor at 120 BPM", facts)


def test_every_template_carries_the_facts_for_every_source():
    assert len(cap._TEMPLATES) >= 6
    sources = [SCORE, RECORDING, arrange("funk", np.random.default_rng(1), duration=2.0).attributes]
    for attributes in sources:
        for template in cap._TEMPLATES:
            for seed in range(5):
                text = template(cap._phrases(attributes, np.random.default_rng(seed)))
                assert caption_mentions(text, attributes), (template.__name__, text)


def test_captions_vary_across_seeds():
    attributes = arrange("rock", np.random.default_rng(0), duration=2.0).attributes
    captions = _captions(attributes, 60)
    assert len(set(captions)) >= 30
    openings = {" ".join(c.split()[:2]) for c in captions}
    assert len(openings) >= 6
