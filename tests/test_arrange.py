"""Procedural arrangements: reproducible, truthful attributes, playable notes, melodies in key."""

import numpy as np
import pretty_midi
import pytest

from melody.data.synth import arrange as ar
from melody.data.synth.arrange import STYLES, arrange
from melody.errors import MelodyError

SCHEMA = {"style", "tempo_bpm", "tempo_qpm", "key", "mode", "time_signature", "dynamics", "instruments", "gm_programs", "parts", "mood"}
ROLES = ("drums", "bass", "harmony", "melody")


def _notes(midi: pretty_midi.PrettyMIDI) -> list:
    return [
        (i.name, i.program, i.is_drum, [(n.pitch, n.start, n.end, n.velocity) for n in i.notes]) for i in midi.instruments
    ]


def _piece(style: str, seed: int, duration: float = 4.0) -> ar.Arrangement:
    return arrange(style, np.random.default_rng(seed), duration=duration)


def _melody_notes(midi: pretty_midi.PrettyMIDI) -> list[pretty_midi.Note]:
    return [n for i in midi.instruments if i.name.startswith("melody:") for n in sorted(i.notes, key=lambda n: n.start)]


def test_required_styles_are_offered():
    required = {"rock", "jazz", "ambient", "electronic", "classical strings", "folk", "piano ballad", "funk"}
    assert required <= set(STYLES)


@pytest.mark.parametrize("style", STYLES)
def test_same_seed_gives_the_same_piece_and_another_seed_another(style):
    first, again, other = _piece(style, 7), _piece(style, 7), _piece(style, 8)
    assert _notes(first.midi) == _notes(again.midi)
    assert first.attributes == again.attributes
    assert _notes(first.midi) != _notes(other.midi)


@pytest.mark.parametrize("style", STYLES)
def test_attributes_follow_the_schema_and_match_the_midi(style):
    for seed in range(3):
        piece = _piece(style, seed)
        a = piece.attributes
        assert set(a) == SCHEMA
        assert a["style"] == style
        assert a["tempo_bpm"] == float(int(a["tempo_bpm"]))
        (tempo,) = piece.midi.get_tempo_changes()[1]
        assert tempo == pytest.approx(a["tempo_qpm"], abs=0.01)
        expected = a["tempo_qpm"] / 1.5 if a["time_signature"] == "6/8" else a["tempo_qpm"]
        assert a["tempo_bpm"] == round(expected)
        (signature,) = piece.midi.time_signature_changes
        assert f"{signature.numerator}/{signature.denominator}" == a["time_signature"]
        assert a["key"] in {"C", "C#", "Db", "D", "Eb", "E", "F", "F#", "G", "G#", "Ab", "A", "Bb", "B"}
        assert a["mode"] in ar.MODES
        assert a["dynamics"] in {"soft", "medium", "loud"}
        assert isinstance(a["mood"], str) and a["mood"]
        assert len(a["instruments"]) == len(a["gm_programs"]) == len(set(a["instruments"]))


@pytest.mark.parametrize("style", STYLES)
def test_claimed_parts_and_instruments_are_in_the_midi(style):
    for seed in range(3):
        piece = _piece(style, seed)
        roles = {i.name.split(":")[0] for i in piece.midi.instruments if i.notes}
        assert set(piece.attributes["parts"]) == roles
        assert set(roles) <= set(ROLES)
        names = {i.name.split(": ", 1)[1] for i in piece.midi.instruments}
        assert set(piece.attributes["instruments"]) == names
        for instrument in piece.midi.instruments:
            assert instrument.is_drum == instrument.name.startswith("drums:")
        drums_listed = [p == -1 for p in piece.attributes["gm_programs"]]
        assert any(drums_listed) == ("drums" in roles)
        first = piece.midi.instruments[0].name
        assert piece.attributes["instruments"][0] == first.split(": ", 1)[1] and first.startswith("melody:")


def test_styles_have_the_parts_they_need():
    assert "drums" not in _piece("ambient", 0).attributes["parts"]
    for style in ("rock", "jazz", "electronic", "funk"):
        assert set(_piece(style, 0).attributes["parts"]) == set(ROLES)
    assert set(_piece("classical strings", 0).attributes["gm_programs"]) <= set(range(40, 50))
    funk_bass = [i.program for i in _piece("funk", 3).midi.instruments if i.name.startswith("bass:")]
    assert funk_bass and funk_bass[0] in (33, 36, 37)


@pytest.mark.parametrize("style", STYLES)
def test_notes_are_playable_and_the_piece_lasts_long_enough(style):
    for seed in range(3):
        piece = _piece(style, seed, duration=5.0)
        assert piece.midi.get_end_time() >= 5.0
        for instrument in piece.midi.instruments:
            assert instrument.notes
            for note in instrument.notes:
                assert 0 <= note.start < note.end
                assert 1 <= note.velocity <= 127
                assert (27 <= note.pitch <= 82) if instrument.is_drum else (21 <= note.pitch <= 108)


@pytest.mark.parametrize("style", STYLES)
def test_melody_stays_in_key_and_moves_mostly_by_step(style):
    in_scale, steps = [], []
    for seed in range(4):
        piece = _piece(style, seed, duration=10.0)
        scale = ar.scale_pitch_classes(ar.pitch_class(piece.attributes["key"]), piece.attributes["mode"])
        pitches = [n.pitch for n in _melody_notes(piece.midi)]
        in_scale += [p % 12 in scale for p in pitches]
        steps += [abs(b - a) <= 4 for a, b in zip(pitches, pitches[1:])]
    assert np.mean(in_scale) >= 0.95
    assert np.mean(steps) >= 0.6  # stepwise melody, not random leaps


def test_pieces_vary_within_a_style():
    pieces = [_piece("folk", seed).attributes for seed in range(30)]
    for field in ("tempo_bpm", "key", "mode", "time_signature", "dynamics"):
        assert len({str(p[field]) for p in pieces}) > 1, field
    assert len({tuple(p["instruments"]) for p in pieces}) > 3


def test_unknown_style_is_a_user_error():
    with pytest.raises(MelodyError, match="unknown style"):
        arrange("polka", np.random.default_rng(0))


def test_roman_numerals_read_as_chords():
    c, a = ar.pitch_class("C"), ar.pitch_class("A")
    assert ar.parse_numeral("V7", c) == ar.Chord(7, (0, 4, 7, 10), "V7")
    assert ar.parse_numeral("bVII", a).root == ar.pitch_class("G")
    assert ar.parse_numeral("iiø7", c).pitch_classes == (2, 5, 8, 0)
    with pytest.raises(MelodyError):
        ar.parse_numeral("Q7", c)


def test_swing_moves_only_offbeats():
    assert ar.swung(0.5, 2 / 3) == pytest.approx(2 / 3)
    assert ar.swung(3.0, 2 / 3) == pytest.approx(3.0)
    assert ar.swung(1.25, 0.6, unit=0.5) == pytest.approx(1.3)
    assert ar.swung(2.5, 0.5) == 2.5


def test_voicings_stay_in_range_and_move_little():
    chord = ar.parse_numeral("IVmaj7", ar.pitch_class("C"))
    first = ar.voicing(chord, "close", 55, 76)
    assert all(55 <= p <= 76 for p in first) and {p % 12 for p in first} == {5, 9, 0, 4}
    following = ar.voicing(ar.parse_numeral("V7", 0), "close", 55, 76, first)
    assert sum(abs(a - b) for a, b in zip(first, following)) <= 8
    assert ar.voicing(chord, "power", 40, 64) == (41, 48, 53)


def test_jazz_and_hip_hop_mix_the_kit_above_the_bass():
    # A kit mixed far below a loud bass or horn is heard as no drums at all (see the corpus check).
    for style in ("jazz", "hip hop"):
        for seed in range(3):
            parts = {i.name.split(":")[0]: i for i in _piece(style, seed).midi.instruments}
            backbeat = [n.velocity for n in parts["drums"].notes if n.pitch in (ar.KICK, ar.SNARE, ar.RIDE)]
            assert max(backbeat) > np.mean([n.velocity for n in parts["bass"].notes])


def test_a_jazz_piano_or_guitar_lead_comps_for_itself():
    leads = [_piece("jazz", seed).attributes["instruments"] for seed in range(20)]
    trios = [names for names in leads if names[0] in ("piano", "jazz guitar")]
    assert trios and all(names[1] == "upright bass" for names in trios)
