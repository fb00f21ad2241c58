import collections

import numpy as np
import pytest

from melody.data.synth import scores
from melody.data.synth.scores import (
    CHORALE_ENSEMBLES, ENSEMBLES, FOLK_LEADS, FORM_TEMPO, GM_PROGRAMS, ScorePiece, ScoreWork, SkipReason,
    catalogue, clean_title, diatonic_triads, list_score_works, parse_work, score_piece, try_score_piece,
)  # fmt: skip


def work(work_id: str) -> ScoreWork:
    found = [w for w in catalogue() if w.work_id == work_id]
    assert found, f"{work_id} is not in the catalogue"
    return found[0]


def test_selection_is_deterministic_and_spans_styles_and_collections():
    first = list_score_works(seed=0, limit=300)
    assert first == list_score_works(seed=0, limit=300)
    assert first != list_score_works(seed=1, limit=300)
    styles = collections.Counter(w.style for w in first)
    assert set(styles) == set(scores.STYLES)
    assert styles["folk"] < 0.5 * len(first)  # folk is 85 % of the corpus, not of the selection
    assert styles["baroque"] + styles["classical"] + styles["renaissance"] >= 0.35 * len(first)
    assert len({w.collection for w in first}) >= 10


def test_catalogue_leaves_out_analyses_tests_and_second_copies():
    works = catalogue()
    assert not [w for w in works if w.source_path.endswith(".rntxt") or "essenFolksong/test" in w.source_path]
    quartet = [w for w in works if w.source_path.startswith("beethoven/opus18no1/movement3")]
    assert len(quartet) == 1  # the .krn and .mxl copies of one movement count once
    assert len({w.work_id for w in works}) == len(works)


def test_long_works_give_several_segments_under_one_piece_id():
    listed = [w for w in list_score_works(seed=0) if w.source_path == "beethoven/opus132.mxl"]
    assert len(listed) == scores.MAX_SEGMENTS["classical"]
    assert {w.piece_id for w in listed} == {"beethoven-opus132"}
    assert sorted(w.segment for w in listed) == list(range(len(listed)))


def test_a_chorale_becomes_a_scored_piece_with_its_analysed_key():
    chorale = work("bach/bwv66.6.mxl")
    piece = score_piece(chorale, np.random.default_rng(0), max_seconds=40.0)
    assert isinstance(piece, ScorePiece)
    a = piece.attributes
    analysed = parse_work(chorale).analyze("key")  # the whole chorale fits in 40 s
    assert (a["key"], a["mode"]) == ("F#", "minor") == (analysed.tonic.name, analysed.mode)
    assert a["style"] == "baroque" and a["form"] == "chorale" and a["composer"] == "Johann Sebastian Bach"
    assert a["time_signature"] == "4/4" and a["tempo_source"] == "score" and a["tempo_bpm"] == a["tempo_qpm"] == 96.0
    assert piece.midi.get_tempo_changes()[1][0] == pytest.approx(96.0)
    assert a["instruments"] in [list(dict.fromkeys(ENSEMBLES[e])) for e in CHORALE_ENSEMBLES]
    assert a["gm_programs"] == [GM_PROGRAMS[n] for n in a["instruments"]]
    assert set(a["parts"]) == {"melody", "harmony", "bass"} and a["dynamics"] in ("soft", "medium", "loud")
    assert len(piece.midi.instruments) == 4 and all(inst.notes for inst in piece.midi.instruments)
    assert piece.midi.get_end_time() == pytest.approx(a["seconds"], abs=0.05)
    assert a["seconds"] == pytest.approx(36.0 * 60 / 96, abs=0.01)  # 36 quarter notes at 96 per minute


def test_a_chorale_renders_to_real_sound():
    pytest.importorskip("fluidsynth")
    from melody.data.synth.render import render_midi

    piece = score_piece(work("bach/bwv66.6.mxl"), np.random.default_rng(1))
    audio = render_midi(piece.midi, sample_rate=24_000)
    assert audio.dtype == np.float32 and np.isfinite(audio).all()
    assert piece.attributes["seconds"] < len(audio) / 24_000 < piece.attributes["seconds"] + 2.0
    assert 20 * np.log10(np.sqrt(np.mean(audio**2))) > -40.0


def test_a_folk_tune_gets_a_lead_a_dance_tempo_and_its_analysed_key():
    reel = work("oneills1850/1176-1275.abc#1176")  # "The Girl Who Broke My Heart", R:Reel, K:Gm
    piece = try_score_piece(reel, np.random.default_rng(0), max_seconds=40.0)
    assert isinstance(piece, ScorePiece)
    a = piece.attributes
    expanded = parse_work(reel).expandRepeats()  # folk tunes are played with their repeats
    analysed = expanded.analyze("key")
    assert (a["key"], a["mode"]) == (analysed.tonic.name.replace("-", "b"), analysed.mode) == ("G", "minor")
    assert a["style"] == "folk" and a["form"] == "reel" and a["origin"] == "Ireland"
    assert a["title"] == "The Girl Who Broke My Heart" and a["composer"] is None
    assert a["instruments"][0] in FOLK_LEADS["irish"] and "melody" in a["parts"]
    lo, hi = FORM_TEMPO["reel"]  # half-note beats in 2/2: the MIDI tempo counts quarter notes
    assert a["tempo_source"] == "chosen" and lo <= a["tempo_bpm"] <= hi
    assert piece.midi.get_tempo_changes()[1][0] == pytest.approx(a["tempo_qpm"], abs=0.01)
    assert a["tempo_qpm"] == pytest.approx(2 * a["tempo_bpm"], abs=0.1)
    assert a["time_signature"] == "2/2" and 20.0 <= a["seconds"] <= 40.0
    assert sum(len(i.notes) for i in piece.midi.instruments) > 100


def test_the_same_seed_performs_a_work_the_same_way():
    reel = work("oneills1850/1176-1275.abc#1176")
    one = score_piece(reel, np.random.default_rng(7))
    two = score_piece(reel, np.random.default_rng(7))
    assert one.attributes == two.attributes
    notes = lambda p: [(n.start, n.end, n.pitch, n.velocity) for i in p.midi.instruments for n in i.notes]  # noqa: E731
    assert notes(one) == notes(two)


def test_unreadable_and_exhausted_works_are_skipped_with_a_reason():
    missing = ScoreWork("nope/missing.mxl", "nope", "nope/missing.mxl", None, "baroque", None, None, 4, 32.0)
    skipped = try_score_piece(missing, np.random.default_rng(0))
    assert isinstance(skipped, SkipReason) and "music21 failed" in skipped.reason
    assert score_piece(missing, np.random.default_rng(0)) is None
    past_end = ScoreWork(**{**vars(work("bach/bwv66.6.mxl")), "segment": 5})
    skipped = try_score_piece(past_end, np.random.default_rng(0))
    assert isinstance(skipped, SkipReason) and "past the end" in skipped.reason


def test_short_folk_songs_are_sung_for_several_verses():
    notes = [[scores._Note(0.0, 2.0, 60), scores._Note(2.0, 4.0, 62)]]
    bars = [(0.0, 2.0), (2.0, 4.0)]
    lines, bars_out, length, verses = scores._verses(notes, bars, 4.0, max_quarters=11.0)
    assert length == 10.0 and verses == 3  # cut at the last bar line within 11 quarters
    assert [(n.start, n.pitch) for n in lines[0]] == [(0, 60), (2, 62), (4, 60), (6, 62), (8, 60)]
    assert bars_out[-1] == (8.0, 10.0)


def test_chords_come_from_the_mode_and_follow_the_melody():
    assert [t for _, t in diatonic_triads(0, "major")] == [
        (0, 4, 7), (2, 5, 9), (4, 7, 11), (5, 9, 0), (7, 11, 2), (9, 0, 4),
    ]  # fmt: skip  # vii° left out
    g_major_bar = [scores._Note(0.0, 1.0, 67), scores._Note(1.0, 2.0, 71), scores._Note(2.0, 3.0, 74)]
    assert scores._chord_for_bar(g_major_bar, (0.0, 3.0), diatonic_triads(0, "major")) == (7, 11, 2)


def test_tempo_is_felt_per_bar_when_the_beat_is_too_fast():
    assert scores._felt_tempo(320.0, 3) == pytest.approx(320.0 / 3)  # a scherzo's one-in-a-bar
    assert scores._felt_tempo(35.0, 4) == 70.0 and scores._felt_tempo(100.0, 2) == 100.0


def test_titles_are_tidied():
    assert clean_title("Wir haben verloren ein Bl\x81melein, S. 18") == "Wir haben verloren ein Blümelein"
    assert clean_title("DRAUSSEN AUF GRUENESTER HAID") == "Draussen Auf Gruenester Haid"
    assert clean_title("Croton -- Hornpipe") == "Croton Hornpipe" and clean_title("  ") is None
    assert scores.title_from_path("beethoven/opus18no1/movement3.mxl") == "Op. 18 No. 1, movement 3"
    assert scores._title("palestrina/Credo_45_b.krn", "Crucifixus") == "Credo (mass 45): Crucifixus"
    assert scores._title("verdi/laDonnaEMobile.mxl", None) == "La Donna E Mobile"
    assert scores._title("cpebach/h186.mxl", None) is None
