import dataclasses
import json
import typing

import pytest

from melody.config import PRESETS, MelodyConfig, apply_overrides, from_dict, load_config, preset, save_config, to_dict
from melody.errors import MelodyError


def test_paper_preset_holds_the_papers_sizes():
    cfg = preset("paper")
    assert cfg.data.sample_rate == 24_000
    assert cfg.vae.latent_dim == 16
    hop = 1
    for s in cfg.vae.strides:
        hop *= s
    assert hop == 96 and cfg.vae.sample_rate // hop == 250  # 250 Hz latents
    assert (cfg.vae.encoder_channels, cfg.vae.decoder_channels) == (256, 768)
    assert (cfg.mulan.rvq_levels, cfg.mulan.codebook_size) == (12, 1024)
    assert (cfg.tokenizer.frame_rate, cfg.tokenizer.codebook_size) == (25, 1024)
    assert (cfg.dpd.hidden, cfg.dpd.blocks, cfg.dpd.segment_size, cfg.dpd.segment_hop) == (768, 8, 64, 32)
    assert cfg.dpd.merge_factors == (2, 4, 8, 16, 16, 8, 4, 2)
    assert cfg.dpd.chunks == 4 and cfg.dpd.guidance == 2.5


def test_every_preset_builds_and_tiny_is_smaller():
    for name in PRESETS:
        assert preset(name).preset == name
    tiny, paper = preset("tiny"), preset("paper")
    assert tiny.dpd.hidden < paper.dpd.hidden and tiny.semantic_lm.depth < paper.semantic_lm.depth
    assert len(tiny.dpd.merge_factors) == tiny.dpd.blocks


def test_json_round_trip(tmp_path):
    cfg = preset("tiny", ["dpd.blocks=8", "dpd.merge_factors=2,4,8,16,16,8,4,2", "train.lr=1e-3", "data.soundfont=x.sf2"])
    path = save_config(cfg, tmp_path / "config.json")
    assert json.loads(path.read_text())["format_version"] == 1
    again = load_config(path)
    assert again == cfg
    assert isinstance(again.dpd.merge_factors, tuple) and isinstance(again.train.lr, float)


def test_overrides_parse_by_field_type():
    cfg = apply_overrides(MelodyConfig(), ["dpd.blocks=8", "vae.strides=(2, 4, 4, 3)", "train.ema_decay=0.999", "train.mixed_precision=no"])
    assert cfg.dpd.blocks == 8 and cfg.vae.strides == (2, 4, 4, 3)
    assert cfg.train.ema_decay == 0.999 and cfg.train.mixed_precision == "no"


@pytest.mark.parametrize(
    "override, message",
    [
        ("dpd.dept=8", "unknown config key 'dpd.dept'"),
        ("nope.blocks=8", "unknown config key 'nope.blocks'"),
        ("dpd.blocks=eight", "config key 'dpd.blocks' expects int, got 'eight'"),
        ("train.lr=fast", "config key 'train.lr' expects float"),
        ("vae.strides=2,x", "config key 'vae.strides' expects a comma-separated list of int"),
        ("dpd", "not of the form section.key=value"),
        ("dpd=1", "config key 'dpd' is a section"),
    ],
)
def test_override_errors_are_one_line_and_name_the_key(override, message):
    with pytest.raises(MelodyError) as err:
        preset("tiny", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_loading_rejects_unknown_keys_and_wrong_types(tmp_path):
    data = to_dict(preset("tiny"))
    data["dpd"]["bloks"] = 3
    with pytest.raises(MelodyError, match="unknown config key 'dpd.bloks'"):
        from_dict(data)
    data = to_dict(preset("tiny"))
    data["dpd"]["blocks"] = "8"
    with pytest.raises(MelodyError, match="config key 'dpd.blocks' expects int"):
        from_dict(data)
    data = to_dict(preset("tiny"))
    data["train"]["steps"] = True  # a bool is not an int here
    with pytest.raises(MelodyError, match="train.steps"):
        from_dict(data)


def test_missing_keys_take_defaults_and_bad_files_are_clear(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"format_version": 1, "preset": "tiny", "dpd": {"blocks": 3}}))
    cfg = load_config(tmp_path / "old.json")
    assert cfg.dpd.blocks == 3 and cfg.dpd.hidden == MelodyConfig().dpd.hidden
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MelodyError, match="not valid JSON"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "v9.json").write_text(json.dumps({"format_version": 9}))
    with pytest.raises(MelodyError, match="format version 9"):
        load_config(tmp_path / "v9.json")
    with pytest.raises(MelodyError, match="unknown preset 'huge'"):
        preset("huge")


def test_config_tree_has_no_mutable_defaults():
    sections = [tp for tp in typing.get_type_hints(MelodyConfig).values() if dataclasses.is_dataclass(tp)]
    assert len(sections) == 7
    for cls in sections:
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING or not isinstance(f.default, (list, dict, set))
