import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from melody.checkpoint import (
    FORMAT,
    flatten_optimizer,
    load_model,
    read_tensors,
    save_model,
    unflatten_optimizer,
    write_tensors,
)
from melody.config import preset
from melody.errors import MelodyError
from melody.vae import VAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["vae.encoder_channels=16", "vae.decoder_channels=16"]


def build(cfg):
    return VAE(cfg.vae)


def export(folder, *overrides, stage="vae"):
    cfg = preset("tiny", [*SMALL, *overrides])
    torch.manual_seed(0)
    vae = VAE(cfg.vae)
    save_model(folder, "vae", vae, cfg, stage)
    return vae


def one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and text
    return text


def test_tensors_round_trip_with_dtypes_and_metadata(tmp_path):
    tensors = {
        "a.weight": torch.randn(3, 4),
        "a.half": torch.randn(5).half(),
        "b.bf16": torch.randn(2, 2).bfloat16(),
        "steps": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "mask": torch.tensor([True, False]),
        "strided": torch.randn(4, 6)[:, ::2],  # non-contiguous in memory
    }
    path = write_tensors(tmp_path / "w.safetensors", tensors, {"stage": "vae", "note": "hi"})
    back, meta = read_tensors(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    assert meta == {"format": FORMAT, "format_version": "1", "stage": "vae", "note": "hi"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temp file left


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = write_tensors(tmp_path / "w.safetensors", {"x": torch.ones(2)})
    before = path.read_bytes()
    with pytest.raises(TypeError):  # raised by safetensors inside the write (metadata must be strings)
        write_tensors(path, {"x": torch.zeros(3)}, {"bad": 1})  # type: ignore[dict-item]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_saved_model_loads_with_identical_outputs_in_eval_mode(tmp_path):
    vae = export(tmp_path).train()
    loaded = load_model(tmp_path, "vae", "vae", build)
    assert not loaded.training
    assert json.loads((tmp_path / "config.json").read_text())["vae"]["decoder_channels"] == 16
    audio = torch.randn(2, 1, 500, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = vae(audio, generator=torch.Generator().manual_seed(1))
        b = loaded(audio, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.audio, b.audio) and torch.equal(a.latents, b.latents)
    for k, v in vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    export(tmp_path)
    path = tmp_path / "vae.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MelodyError) as excinfo:
        load_model(tmp_path, "vae", "vae", build)
    assert "corrupt or truncated" in one_line_error(excinfo)
    with pytest.raises(MelodyError, match="corrupt or truncated"):
        read_tensors(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"not a safetensors file at all, just text" * 10,
                                     (2**40).to_bytes(8, "little") + b"{}"])
def test_garbage_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "g.safetensors"
    path.write_bytes(content)
    with pytest.raises(MelodyError) as excinfo:
        read_tensors(path, "vae weights")
    assert "corrupt or truncated" in one_line_error(excinfo) and str(path) in str(excinfo.value)


def test_foreign_safetensors_file_is_not_a_melody_file(tmp_path):
    export(tmp_path)
    save_file({"x": torch.ones(1)}, str(tmp_path / "vae.safetensors"))
    with pytest.raises(MelodyError) as excinfo:
        load_model(tmp_path, "vae", "vae", build)
    assert "not a melody" in one_line_error(excinfo)


def test_other_format_version_is_refused(tmp_path):
    write_tensors(tmp_path / "w.safetensors", {"x": torch.ones(1)}, {"format_version": "2"})
    with pytest.raises(MelodyError) as excinfo:
        read_tensors(tmp_path / "w.safetensors")
    assert "format version 2 is not supported" in one_line_error(excinfo)


def test_weights_of_another_config_do_not_fit(tmp_path):
    export(tmp_path, "vae.decoder_channels=32")
    config = json.loads((tmp_path / "config.json").read_text())
    config["vae"]["decoder_channels"] = 16  # a config.json that does not match the weights beside it
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(MelodyError) as excinfo:
        load_model(tmp_path, "vae", "vae", build)
    text = one_line_error(excinfo)
    assert "do not fit" in text and "other shapes" in text


def test_missing_and_unexpected_tensors_do_not_fit(tmp_path):
    vae = export(tmp_path)
    state = vae.state_dict()
    dropped = sorted(state)[0]
    write_tensors(tmp_path / "vae.safetensors", {k: v for k, v in state.items() if k != dropped} | {"extra": torch.ones(1)},
                  {"stage": "vae"})
    with pytest.raises(MelodyError) as excinfo:
        load_model(tmp_path, "vae", "vae", build)
    text = one_line_error(excinfo)
    assert "do not fit" in text and f"1 missing (e.g. {dropped})" in text and "1 unexpected (e.g. extra)" in text


def test_weights_of_another_stage_are_refused(tmp_path):
    export(tmp_path, stage="mulan")
    with pytest.raises(MelodyError) as excinfo:
        load_model(tmp_path, "vae", "vae", build)
    assert "holds 'mulan' weights, not 'vae'" in one_line_error(excinfo)


def test_missing_folder_or_file_is_a_one_line_error(tmp_path):
    with pytest.raises(MelodyError) as excinfo:
        load_model(tmp_path / "nope", "vae", "vae", build)
    assert "no such model folder" in one_line_error(excinfo)
    with pytest.raises(MelodyError) as excinfo:
        load_model(tmp_path, "vae", "vae", build)
    assert "holds no vae.safetensors" in one_line_error(excinfo)
    with pytest.raises(MelodyError) as excinfo:
        read_tensors(tmp_path / "absent.safetensors")
    assert "not found" in one_line_error(excinfo)


def test_optimizer_state_round_trips_through_tensors_and_json(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01)
    x = torch.randn(8, 4)

    def step(m, o):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()

    for _ in range(2):
        step(model, opt)
    tensors, rest = flatten_optimizer(opt.state_dict())
    assert all(k.startswith("state.") for k in tensors) and len(tensors) >= 2 * 4  # exp_avg, exp_avg_sq per param
    write_tensors(tmp_path / "opt.safetensors", tensors)
    back, _ = read_tensors(tmp_path / "opt.safetensors")
    rest = json.loads(json.dumps(rest))  # as trainer.json stores it

    clone = copy.deepcopy(model)
    fresh = torch.optim.AdamW(clone.parameters(), lr=1.0)
    fresh.load_state_dict(unflatten_optimizer(back, rest))
    assert fresh.param_groups[0]["lr"] == 1e-2 and tuple(fresh.param_groups[0]["betas"]) == (0.8, 0.99)
    for _ in range(3):
        step(model, opt)
        step(clone, fresh)
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_scalars_stay_python_numbers():
    state = {"state": {0: {"step": 3, "exp_avg": torch.ones(2)}, 1: {"step": 3.0}},
             "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    tensors, rest = flatten_optimizer(state)
    assert list(tensors) == ["state.0.exp_avg"] and rest["scalars"] == {"0": {"step": 3}, "1": {"step": 3.0}}
    back = unflatten_optimizer(tensors, json.loads(json.dumps(rest)))
    assert back["param_groups"] == state["param_groups"] and set(back["state"]) == {0, 1}
    assert back["state"][0]["step"] == 3 and torch.equal(back["state"][0]["exp_avg"], torch.ones(2))
    assert back["state"][1] == {"step": 3.0}
