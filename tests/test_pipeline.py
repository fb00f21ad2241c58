"""MeLoDy end to end on a tiny random bundle made here (untrained weights: shapes, counts, seeds, errors)."""

import math

import pytest
import torch
from test_cli import TINY_VAE
from test_mulan import tiny_bert
from test_semantic_stages import TINY_STACK

from melody.checkpoint import load_model_and_config, save_model
from melody.config import preset
from melody.dpd import DPD
from melody.errors import MelodyError
from melody.mulan import MuLan
from melody.pipeline import STAGES, MeLoDy
from melody.semantic.lm import SemanticLM
from melody.semantic.tokenizer import SemanticTokenizer
from melody.vae import VAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_DPD = ["dpd.hidden=32", "dpd.blocks=2", "dpd.segment_size=8", "dpd.merge_factors=2,4", "dpd.angle_dim=16",
            "dpd.heads=2", "dpd.crop_seconds=1", "dpd.window_seconds=1", "dpd.steps=2",
            "vae.strides=2,4,4,5"]  # 8 kHz / 160 = 50 Hz latents


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    (root / "bert").mkdir()
    model, tokenizer = tiny_bert(root / "bert", words=["funk", "piano", "calm"])
    model.save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    cfg = preset("tiny", [*TINY_STACK, *TINY_VAE, *TINY_DPD, f"mulan.text_encoder={root / 'bert'}"])
    torch.manual_seed(0)
    mulan = MuLan.from_config(cfg.mulan, cfg.vae.sample_rate)
    mulan.fit_tokens(torch.nn.functional.normalize(torch.randn(64, cfg.mulan.embed_dim), dim=-1))
    tok = SemanticTokenizer.from_config(cfg.tokenizer, cfg.vae.sample_rate)
    tok.quantizer.centroids.normal_()
    models = {"mulan": mulan, "tokenizer": tok, "semantic_lm": SemanticLM.from_config(cfg), "dpd": DPD.from_config(cfg),
              "vae": VAE(cfg.vae)}
    with torch.no_grad():
        models["dpd"].output.weight.normal_(0, 0.05)  # untrained DPDs predict 0: give it a voice
        for block in models["semantic_lm"].transformer.blocks:  # and a fresh LM barely listens to its condition
            block.attn.qkv.weight.mul_(4)
    for stage, m in models.items():
        save_model(root / "bundle" / stage, stage, m, cfg, stage)
    return root / "bundle"


@pytest.fixture(scope="module")
def melody(bundle):
    return MeLoDy.from_pretrained(bundle)


@pytest.mark.parametrize("duration", [0.3, 1.0, 2.7])
def test_output_length_is_duration_times_rate_exactly(melody, duration):
    out = melody.generate(["calm piano"], duration)
    rate = melody.vae.cfg.sample_rate
    assert out.audio.shape == (1, 1, round(duration * rate)) and out.audio.dtype == torch.float32
    assert out.semantic_tokens.shape == (1, math.ceil(duration * 25))
    assert out.latents.shape[1] == math.ceil(duration * melody.vae.latent_rate)
    assert bool(torch.isfinite(out.audio).all()) and float(out.audio.abs().max()) <= 1.0


def test_forward_passes_follow_the_papers_count(melody):
    out = melody.generate(["funk"], 2.7, steps=3, guidance=2.5)
    windows = 1 + math.ceil((math.ceil(2.7 * 50) - 50) / 25)  # 1 s windows (50 frames) advancing by 0.5 s
    assert out.forward_passes == {"mulan": 1, "semantic_lm": math.ceil(2.7 * 25), "dpd": windows * 3, "vae": 1}
    assert set(out.seconds) == set(out.forward_passes)


def test_the_dpd_samples_windows_of_window_seconds_not_of_its_training_crop(melody):
    assert melody.cfg.dpd.crop_seconds == 1
    melody.cfg.dpd.window_seconds = 2.0  # 100 frames advancing by 50
    try:
        out = melody.generate(["funk"], 2.7, steps=3)
    finally:
        melody.cfg.dpd.window_seconds = 1.0
    windows = 1 + math.ceil((math.ceil(2.7 * 50) - 100) / 50)
    assert windows == 2 and out.forward_passes["dpd"] == windows * 3  # 1 s windows would be 5


def test_seed_reproduces_and_another_seed_differs(melody):
    a = melody.generate(["funk", "calm piano"], 1.5, seed=3)
    b = melody.generate(["funk", "calm piano"], 1.5, seed=3)
    c = melody.generate(["funk", "calm piano"], 1.5, seed=4)
    assert torch.equal(a.audio, b.audio) and torch.equal(a.semantic_tokens, b.semantic_tokens)
    assert not torch.equal(a.audio, c.audio)


@pytest.mark.parametrize("prompts, duration, message", [
    ([""], 1.0, "a prompt is empty"),
    (["x" * 1001], 1.0, "keep it under 1000"),
    ("funk", 1.0, "give a list"),
    (["funk"], 0.0, "positive number of seconds"),
    (["funk"], -2.0, "positive number of seconds"),
    (["funk"], float("nan"), "positive number of seconds"),
    (["funk"], 601.0, "beyond the limit"),
])
def test_bad_input_is_a_one_line_error(melody, prompts, duration, message):
    with pytest.raises(MelodyError, match=message):
        melody.generate(prompts, duration)


def test_a_missing_or_incomplete_bundle_is_a_one_line_error(bundle, tmp_path):
    with pytest.raises(MelodyError, match="no such bundle folder"):
        MeLoDy.from_pretrained(tmp_path / "nope")
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(bundle, partial)
    shutil.rmtree(partial / "dpd")
    with pytest.raises(MelodyError, match="no 'dpd' folder"):
        MeLoDy.from_pretrained(partial)
    assert set(STAGES) == {p.name for p in bundle.iterdir()}


def test_a_codebook_lm_must_carry_the_bundles_mulan_codebooks(bundle, melody, tmp_path):
    import shutil

    copy = tmp_path / "codebook"
    shutil.copytree(bundle, copy)
    _, cfg = load_model_and_config(bundle / "semantic_lm", "semantic_lm", "semantic_lm", SemanticLM.from_config)
    cfg.semantic_lm.condition_embedding = "codebook"
    torch.manual_seed(0)
    lm = SemanticLM.from_config(cfg)
    lm.set_mulan_codebooks(melody.mulan.rvq.codebooks)
    save_model(copy / "semantic_lm", "semantic_lm", lm, cfg, "semantic_lm", torch.float16)  # --half, as the bundle's
    out = MeLoDy.from_pretrained(copy).generate(["funk"], 0.5, seed=3)
    assert out.audio.shape == (1, 1, round(0.5 * melody.vae.cfg.sample_rate)) and bool(torch.isfinite(out.audio).all())
    lm.set_mulan_codebooks(melody.mulan.rvq.codebooks + 0.01)
    save_model(copy / "semantic_lm", "semantic_lm", lm, cfg, "semantic_lm")
    with pytest.raises(MelodyError, match="another MuLan's codebooks"):
        MeLoDy.from_pretrained(copy)


def test_a_batch_gives_each_prompt_what_it_gets_alone_with_seed_plus_its_index(melody):
    both = melody.generate(["funk", "calm piano"], 1.3, seed=7)
    first = melody.generate(["funk"], 1.3, seed=7)
    second = melody.generate(["calm piano"], 1.3, seed=8)
    torch.testing.assert_close(both.audio[0], first.audio[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(both.audio[1], second.audio[0], rtol=0, atol=1e-5)
    assert torch.equal(both.semantic_tokens, torch.cat((first.semantic_tokens, second.semantic_tokens)))


def test_continuation_keeps_the_input_as_its_prefix_and_adds_the_asked_length(melody):
    rate = melody.vae.cfg.sample_rate
    g = torch.Generator().manual_seed(0)
    clip = (0.1 * torch.randn(2, 1, round(1.37 * rate), generator=g)).clamp(-1, 1)
    out = melody.continue_(clip, 1.2, seed=5)
    assert out.audio.shape == (2, 1, clip.shape[-1] + round(1.2 * rate))
    assert torch.equal(out.audio[..., : clip.shape[-1]], clip)
    assert out.semantic_tokens.shape == (2, math.ceil((clip.shape[-1] / rate + 1.2) * 25))
    assert torch.equal(out.semantic_tokens[:, :35], melody.tokenizer.tokens(clip.mean(1)))  # the input's own tokens lead
    again = melody.continue_(clip, 1.2, seed=5)
    assert torch.equal(out.audio, again.audio)
    texted = melody.continue_(clip, 1.2, prompts=["funk", "calm piano"], seed=5)
    assert not torch.equal(texted.audio, out.audio)  # the prompt's tokens condition the continuation
    for i in range(2):  # clip i of a batch gets what it gets alone with seed + i (the VAE's posterior noise too)
        alone = melody.continue_(clip[i:i + 1], 1.2, seed=5 + i)
        torch.testing.assert_close(alone.audio, out.audio[i:i + 1], rtol=0, atol=1e-5)
        torch.testing.assert_close(alone.latents, out.latents[i:i + 1], rtol=0, atol=1e-5)
    with pytest.raises(MelodyError, match="one prompt per clip"):
        melody.continue_(clip, 1.0, prompts=["funk"])
    with pytest.raises(MelodyError, match="must be \\(batch, 1, samples\\)"):
        melody.continue_(clip[:, 0], 1.0)


def test_stream_chunks_have_the_asked_length_rerun_identically_and_join_like_one_decode(melody):
    import itertools

    rate = melody.vae.cfg.sample_rate
    chunks = list(itertools.islice(melody.stream(itertools.repeat("funk"), chunk_seconds=0.9, seed=2), 4))
    assert [c.shape for c in chunks] == [(1, round(0.9 * rate))] * 4
    joined = torch.cat(chunks, dim=-1)
    assert joined.shape == (1, round(4 * 0.9 * rate))
    again = torch.cat(list(melody.stream(["funk"] * 4, chunk_seconds=0.9, seed=2)), dim=-1)
    assert torch.equal(joined, again)  # chunk k's randomness comes from (seed, k): a re-run is identical
    # chunked decoding adds no seam: the chunks equal one decode of all the stream's latents
    latents = _stream_latents(melody, ["funk"] * 4, 0.9, 2)
    whole = melody.vae.decode_latents(latents).clamp(-1, 1)[0, :, : joined.shape[-1]]
    torch.testing.assert_close(joined, whole, rtol=0, atol=1e-5)


def _stream_latents(melody, prompts, chunk, seed):
    """The latents the stream builds, by running its steps without decoding (same seeds)."""
    import math as m

    from melody.data.loader import mix_seeds
    from melody.pipeline import DECODE_LOOKAHEAD_SECONDS
    from melody.semantic.lm import window_and_stride
    from melody.semantic.sampling import generate

    window, stride = window_and_stride(melody.cfg.semantic_lm, 25)
    tokens, latents = torch.zeros(1, 0, dtype=torch.long), None
    for k, p in enumerate(prompts):
        end = (k + 1) * chunk + DECODE_LOOKAHEAD_SECONDS
        made = generate(melody.semantic_lm, melody.mulan.tokens_from_text([p]), m.ceil(end * 25) - tokens.shape[1],
                        tokens if tokens.shape[1] else None, guidance=melody.cfg.semantic_lm.guidance,
                        generator=torch.Generator().manual_seed(mix_seeds(seed, 1, k)), window=window, stride=stride)
        tokens = torch.cat((tokens, made.tokens), dim=1)
        latents = melody.latents(melody.dpd, tokens, end, melody.cfg.dpd.steps, melody.cfg.dpd.guidance,
                                 mix_seeds(seed, 2, k), start=latents)
    return latents


def test_a_prompt_change_takes_effect_from_its_chunk_on(melody):
    # a random LM barely hears its condition: strong guidance makes the prompts' difference audible
    same = list(melody.stream(["funk", "funk", "funk"], chunk_seconds=0.8, seed=1, lm_guidance=30.0))
    changed = list(melody.stream(["funk", "funk", "calm piano"], chunk_seconds=0.8, seed=1, lm_guidance=30.0))
    assert torch.equal(same[0], changed[0]) and torch.equal(same[1], changed[1])
    assert not torch.equal(same[2], changed[2])



def test_bf16_dpd_sampling_stays_close_to_fp32(melody):
    """`dpd.precision = "bf16"` runs the network under autocast; the sampler's state and the output stay fp32."""
    from melody.eval.metrics import mel_distance

    outs = {}
    for precision in ("fp32", "bf16"):
        melody.cfg.dpd.precision = precision
        outs[precision] = melody.generate(["calm piano"], 1.0, seed=5).audio
    melody.cfg.dpd.precision = "fp32"
    assert "_lm_copies" not in melody.__dict__  # the LM's precision is its own setting
    assert outs["bf16"].dtype == torch.float32 and outs["bf16"].shape == outs["fp32"].shape
    assert not torch.equal(outs["bf16"], outs["fp32"])  # it did run in another precision
    distance = mel_distance(outs["bf16"], outs["fp32"], melody.vae.cfg.sample_rate).item()
    assert distance < 0.1, distance  # two different clips are ≥ 1 apart (docs/dpd.md)


def test_the_bf16_dpd_copy_gives_autocasts_numbers_with_its_linear_weights_cast_once(melody):
    from melody.pipeline import at_precision

    melody.cfg.dpd.precision = "bf16"
    try:
        sampled = melody.dpd_at_precision()
        copy = sampled.model
        assert copy is not melody.dpd and melody.dpd_at_precision().model is copy  # made once, kept
        assert {p.dtype for n, p in copy.named_parameters() if ".w." in n or n.endswith("qkv.weight")} == {torch.bfloat16}
        assert copy.input_norm.weight.dtype == torch.float32 and next(melody.dpd.parameters()).dtype == torch.float32
        torch.manual_seed(0)
        length = 50
        x, delta = torch.randn(2, length, melody.dpd.latent_dim), torch.full((2, length), 0.7)
        tokens = torch.randint(0, melody.dpd.vocab_size, (2, 25))
        with torch.no_grad():
            assert torch.equal(sampled(x, delta, tokens), at_precision(melody.dpd, "bf16", torch.device("cpu"))(x, delta, tokens))
    finally:
        melody.cfg.dpd.precision = "fp32"
    assert melody.dpd_at_precision() is melody.dpd


def test_an_unknown_precision_is_a_one_line_error(melody):
    melody.cfg.dpd.precision = "fp8"
    try:
        with pytest.raises(MelodyError, match="unknown precision 'fp8'; choose one of: fp32, bf16"):
            melody.generate(["calm piano"], 0.5)
    finally:
        melody.cfg.dpd.precision = "fp32"


def test_a_bf16_lm_samples_from_a_bf16_copy_and_leaves_the_fp32_weights(melody):
    before = {k: v.clone() for k, v in melody.semantic_lm.state_dict().items()}
    melody.cfg.semantic_lm.precision = "bf16"
    try:
        lm = melody.lm_at_precision()
        assert lm is not melody.semantic_lm and lm is melody.lm_at_precision()  # made once, kept
        assert next(lm.parameters()).dtype == torch.bfloat16 and next(melody.semantic_lm.parameters()).dtype == torch.float32
        out = melody.generate(["calm piano"], 1.0, seed=5)
        assert out.semantic_tokens.shape == (1, 25) and out.forward_passes["semantic_lm"] == 25
    finally:
        melody.cfg.semantic_lm.precision = "fp32"
    assert melody.lm_at_precision() is melody.semantic_lm
    assert all(torch.equal(v, melody.semantic_lm.state_dict()[k]) for k, v in before.items())



def test_the_bf16_lm_copy_follows_the_lm_to_another_device(melody):
    """A copy made on one device is not sampled from after the LM moved ("meta" stands in for a GPU here)."""
    import copy

    other = copy.copy(melody)  # the same stages, its own attribute dict (no copies yet)
    other.__dict__.pop("_lm_copies", None)
    other.cfg = copy.deepcopy(melody.cfg)
    other.cfg.semantic_lm.precision = "bf16"
    other.semantic_lm = copy.deepcopy(melody.semantic_lm)
    on_cpu = other.lm_at_precision()
    other.semantic_lm.to("meta")
    moved = other.lm_at_precision()
    assert moved is not on_cpu and moved.bos.device.type == "meta" and moved.bos.dtype == torch.bfloat16
    assert on_cpu.bos.device.type == "cpu"


@pytest.mark.parametrize("settings, message", [
    ({"steps": 0}, "steps must be"), ({"steps": 2.5}, "steps must be"), ({"steps": True}, "steps must be"),
    ({"guidance": float("nan")}, "guidance must be"), ({"temperature": -1e-3}, "temperature must be"),
    ({"temperature": float("inf")}, "temperature must be"), ({"top_k": -1}, "top_k must be"), ({"top_k": 1.5}, "top_k must be"),
    ({"lm_guidance": -2}, "lm_guidance must be"), ({"lm_guidance": "3"}, "lm_guidance must be"),
])
def test_a_sampling_setting_out_of_range_is_one_line(settings, message):
    from melody.pipeline import check_sampling

    with pytest.raises(MelodyError, match=message):
        check_sampling(**settings)
    check_sampling(steps=1, guidance=0, temperature=0, top_k=0, lm_guidance=0)  # the edges are allowed
    check_sampling()  # None: the bundle's own


def test_generate_refuses_bad_lm_settings_before_running(bundle):
    model = MeLoDy.from_pretrained(bundle)
    with pytest.raises(MelodyError, match="temperature must be"):
        model.generate(["funk"], 1.0, temperature=-1)
    with pytest.raises(MelodyError, match="top_k must be"):
        model.stream(["funk"], 1.0, top_k=-1).__next__()


def test_semantic_tokens_are_what_generate_hands_the_dpd(bundle):
    model = MeLoDy.from_pretrained(bundle)
    prompts = ["funk", "calm piano at 90 BPM"]
    tokens = model.semantic_tokens(prompts, 1.3, temperature=0.9, top_k=7, seed=5)
    assert tokens.shape == (2, math.ceil(1.3 * model.token_rate)) and tokens.dtype == torch.long
    out = model.generate(prompts, 1.3, steps=1, temperature=0.9, top_k=7, seed=5, fit_tempo=False)
    assert torch.equal(tokens, out.semantic_tokens)
    assert torch.equal(model.semantic_tokens(prompts[1:], 1.3, temperature=0.9, top_k=7, seed=6), tokens[1:])  # row i: seed + i
    assert not torch.equal(model.semantic_tokens(prompts, 1.3, seed=5), tokens)  # the settings reach the LM
    with pytest.raises(MelodyError, match="a prompt is empty"):
        model.semantic_tokens([" "], 1.0)
    with pytest.raises(MelodyError, match="duration must be"):
        model.semantic_tokens(["funk"], -1.0)
    # a music prompt: the tokens generate hands the DPD for it
    music = 0.2 * torch.sin(torch.arange(2 * model.vae.cfg.sample_rate) * 0.05)[None]
    heard = model.semantic_tokens(None, 1.3, seed=5, prompt_audio=music)
    assert torch.equal(heard, model.generate(None, 1.3, steps=1, seed=5, prompt_audio=music).semantic_tokens)
    with pytest.raises(MelodyError, match="not both"):
        model.semantic_tokens(["funk"], 1.0, prompt_audio=music)


def test_the_dpd_solver_is_the_bundles_choice_at_the_same_passes(bundle):
    model = MeLoDy.from_pretrained(bundle)
    assert model.cfg.dpd.solver == "dpmpp-2m"  # the tiny preset's
    model.cfg.dpd.solver = "ddim"
    ddim = model.generate(["funk"], 1.0, steps=5, seed=2)
    model.cfg.dpd.solver = "dpmpp-2m"
    dpm = model.generate(["funk"], 1.0, steps=5, seed=2)
    assert torch.equal(dpm.semantic_tokens, ddim.semantic_tokens) and dpm.forward_passes == ddim.forward_passes
    assert float((dpm.latents - ddim.latents).abs().max()) > 1e-3  # of 5 steps, the 3rd and 4th are second order
    at_three = model.generate(["funk"], 1.0, steps=3, seed=2)  # no step of 3 has two finite log-SNR gaps: DDIM's
    model.cfg.dpd.solver = "ddim"
    torch.testing.assert_close(at_three.latents, model.generate(["funk"], 1.0, steps=3, seed=2).latents, rtol=0, atol=1e-4)
    model.cfg.dpd.solver = "dpmpp-2m"
    longer = model.continue_(dpm.audio, 0.5, ["funk"], steps=3, seed=2)
    assert torch.equal(longer.audio[..., :dpm.audio.shape[-1]], dpm.audio)
    model.cfg.dpd.solver = "euler"
    with pytest.raises(MelodyError, match="unknown DPD solver 'euler'"):
        model.generate(["funk"], 1.0, steps=2)


def test_compiled_samplers_give_the_plain_music_and_are_kept(bundle):  # noqa: F811
    """`semantic_lm.compile` and `dpd.compile` on the CPU: the LM's static step and the DPD through torch.compile
    (inductor), the same tokens and, to the compiled sums' order, the same audio; a second clip reuses them."""
    model = MeLoDy.from_pretrained(bundle)
    plain = model.generate(["calm piano"], 1.0, seed=4)
    model.cfg.semantic_lm.compile = model.cfg.dpd.compile = True
    compiled = model.generate(["calm piano"], 1.0, seed=4)
    assert torch.equal(compiled.semantic_tokens, plain.semantic_tokens)
    torch.testing.assert_close(compiled.audio, plain.audio, atol=1e-4, rtol=0)
    kept = model.compiled_dpd()
    assert kept is not model.dpd_at_precision() and model.compiled_dpd() is kept  # compiled once, kept
    again = model.generate(["calm piano"], 1.0, seed=4)
    torch.testing.assert_close(again.audio, compiled.audio, atol=1e-6, rtol=0)


def test_a_dpd_hearing_mulan_is_told_the_prompts_tokens_wherever_it_samples(bundle, melody, tmp_path):
    """`dpd.mulan_condition`: generate, continue_, inpaint, stream and resynthesize each give the DPD the MuLan tokens
    of what they were asked (the prompts, or the clips' own sound), and those tokens change the music."""
    import shutil

    copy = tmp_path / "heard"
    shutil.copytree(bundle, copy)
    plain, cfg = load_model_and_config(bundle / "dpd", "dpd", "dpd", DPD.from_config)
    cfg.dpd.mulan_condition = True
    dpd = DPD.from_config(cfg)
    dpd.load_state_dict(plain.state_dict() | {k: v for k, v in dpd.state_dict().items() if k.startswith("mulan_")})
    dpd.set_mulan_codebooks(melody.mulan.rvq.codebooks)
    with torch.no_grad():
        dpd.mulan_projection.weight.normal_(0, 0.5)
    save_model(copy / "dpd", "dpd", dpd, cfg, "dpd")
    model = MeLoDy.from_pretrained(copy)
    heard = []
    model.dpd.register_forward_pre_hook(lambda m, args: heard.append(args[2][:, :m.mulan_levels].clone()))

    def told(rows):  # every DPD call since the last look: both guidance branches hear the same tokens
        calls, heard[:] = list(heard), []
        assert calls and all(torch.equal(c, torch.cat((rows, rows))) for c in calls), (calls[0], rows)

    funk, calm = (model.mulan.tokens_from_text([p]) for p in ("funk", "calm piano"))
    out = model.generate(["funk", "calm piano"], 1.3, seed=1)
    told(torch.cat((funk, calm)))
    model.continue_(out.audio, 0.6, prompts=["calm piano", "funk"], seed=1)
    told(torch.cat((calm, funk)))
    model.inpaint(out.audio, 0.3, 0.7, prompts=["calm piano", "funk"], seed=1)
    told(torch.cat((calm, funk)))
    again = model.resynthesize(out.audio[:1], seed=1)
    told(model.mulan.tokens_from_audio(out.audio[:1].mean(1)))
    assert again.forward_passes["mulan"] == 1 and set(again.seconds) == set(again.forward_passes)  # the pass counted
    stream = model.stream(["funk", "calm piano"], chunk_seconds=0.5, seed=1)
    next(stream)
    told(funk)
    next(stream)
    told(calm)
    # the same semantic tokens rendered for two prompts differ only by what the DPD heard
    tokens = out.semantic_tokens[:1]
    latents = [model.latents(model.dpd, tokens, 1.3, 2, 2.5, 0, mulan=m) for m in (funk, calm)]
    assert latents[0].shape == latents[1].shape and not torch.allclose(latents[0], latents[1])
    dpd.set_mulan_codebooks(melody.mulan.rvq.codebooks + 0.01)
    save_model(copy / "dpd", "dpd", dpd, cfg, "dpd")
    with pytest.raises(MelodyError, match="the dpd was trained with another MuLan's codebooks"):
        MeLoDy.from_pretrained(copy)
