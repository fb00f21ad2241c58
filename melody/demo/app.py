"""The demo's page (Gradio): a prompt in, music out, with what it cost.

Left: the prompt, duration, diffusion steps, guidance, seed, an optional music prompt (an audio file,
used instead of the text), Generate and "Continue last result". Right: the audio player, the log-mel
spectrogram (`melody.data.plots.spectrogram_grid`, the picture `melody generate --plot` draws), the
measured time and forward passes, and the JSON record `melody generate` writes. The page holds no
model math: every click asks the `Studio` (server.py) and waits for its job.

Bounds: Gradio's queue holds at most `max_queue` (at least 1) waiting users and runs one generation at a time
(both buttons share one concurrency slot); the job then runs on the studio's one worker, after any API
jobs already there. A `MelodyError` becomes `gr.Error`: a message on the page, never a traceback.
Offline: analytics off before gradio is imported, the theme's fonts served by gradio itself or the system's.
"""

from __future__ import annotations

import functools
import os
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from melody.errors import MelodyError  # noqa: E402

from .server import MAX_GUIDANCE, MAX_SEED, MAX_STEPS, Result, Studio  # noqa: E402

EXAMPLES = ("an upbeat funk groove with slap bass and drums", "a calm ambient piece with soft pads and piano",
            "a fast energetic rock song with distorted electric guitar", "a slow sad classical piece for solo piano")
STAGE_NAMES = {"mulan": "MuLan", "tokenizer": "tokenizer", "semantic_lm": "semantic LM", "dpd": "DPD", "vae": "VAE"}
THEME = gr.themes.Default(primary_hue="orange", neutral_hue="slate")
CSS = "#stats {min-height: 4.5em} footer {opacity: 0.6}"
_PLOT = threading.Lock()  # pyplot keeps global state: one picture at a time


def build_ui(studio: Studio) -> gr.Blocks:
    """The page, its two events wired to the studio, its queue bounded by `studio.max_queue`."""
    with gr.Blocks(title="melody: text to music", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown("# melody: text to music\nMeLoDy (Lam et al., 2023): MuLan → semantic LM → dual-path diffusion → "
                    f"VAE, {studio.sample_rate // 1000} kHz. Describe the music, or give a music prompt; up to "
                    f"{studio.max_duration:g} s per request.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                prompt = gr.Textbox(label="Prompt", lines=2, max_length=1000, elem_id="prompt",
                                    placeholder="an upbeat funk groove with slap bass and drums")
                duration = gr.Slider(0.5, studio.max_duration, value=min(10.0, studio.max_duration), step=0.5,
                                     label="Duration (seconds)", elem_id="duration")
                with gr.Row():
                    steps = gr.Slider(1, MAX_STEPS, value=studio.steps, step=1, precision=0, label="Steps (diffusion)",
                                      elem_id="steps")
                    guidance = gr.Slider(0.0, MAX_GUIDANCE, value=studio.guidance, step=0.1, label="Guidance",
                                         elem_id="guidance")
                    seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="seed")
                with gr.Accordion("Music prompt (optional: an audio file, used instead of the text)", open=False):
                    music = gr.Audio(sources=["upload"], type="filepath", show_label=False, elem_id="music-prompt")
                with gr.Row():
                    make = gr.Button("Generate", variant="primary", elem_id="generate")
                    extend = gr.Button("Continue last result", elem_id="continue")
                gr.Examples([[e] for e in EXAMPLES], inputs=[prompt], label="Try")
            with gr.Column(scale=6):
                audio = gr.Audio(label="Result", type="filepath", interactive=False, buttons=["download"],
                                 elem_id="result")
                picture = gr.Image(label="Log-mel spectrogram", type="filepath", format="png", interactive=False,
                                   buttons=["download", "fullscreen"], elem_id="spectrogram")
                stats = gr.Markdown(elem_id="stats")
                with gr.Accordion("Record: the JSON sidecar that melody generate writes", open=False):
                    record = gr.JSON(show_label=False, elem_id="record")
        shown = [audio, picture, stats, record]
        make.click(on_generate(studio), [prompt, duration, steps, guidance, seed, music], shown, concurrency_limit=1,
                   concurrency_id="model", api_visibility="undocumented")
        extend.click(on_continue(studio), [audio, prompt, duration, steps, guidance, seed], shown, concurrency_limit=1,
                     concurrency_id="model", api_visibility="undocumented")
    # Gradio counts every queued event against max_size, and 0 would refuse even an idle page's first click
    page.queue(max_size=max(1, studio.max_queue), default_concurrency_limit=1)
    return page


def mount_ui(app, studio: Studio):
    """`app` (FastAPI) with the page mounted at `/`; its routes defined before this one keep precedence."""
    return gr.mount_gradio_app(app, build_ui(studio), path="/", theme=THEME, css=CSS, ssr_mode=False,
                               allowed_paths=[str(studio.folder)], footer_links=["gradio", "settings"])


def _on_page(fn):
    """A `MelodyError` shown as a message on the page (gr.Error), without a traceback."""
    @functools.wraps(fn)
    def shown(*args):
        try:
            return fn(*args)
        except MelodyError as err:
            raise gr.Error(str(err), title="Cannot do that", print_exception=False) from None
    return shown


def on_generate(studio: Studio):
    @_on_page
    def generate(prompt, duration, steps, guidance, seed, music):
        future = studio.generate(prompt, duration, steps, guidance, seed, music=music, bounded=False)
        return _show(studio, future.result())
    return generate


def on_continue(studio: Studio):
    @_on_page
    def continue_(last, prompt, duration, steps, guidance, seed):
        if not last:
            raise MelodyError("nothing to continue yet: generate something first")
        future = studio.continue_(last, duration, prompt.strip() or None, steps, guidance, seed, bounded=False)
        return _show(studio, future.result())
    return continue_


def _show(studio: Studio, result: Result) -> tuple:
    """(audio file, spectrogram PNG, what it cost, the record) for the page's outputs."""
    from melody.audio import load_audio
    from melody.data.plots import spectrogram_grid

    record = result.record
    mono = load_audio(result.wav, studio.sample_rate, 1, allow_silent=True)[0]
    title = record.get("prompt") or record.get("prompt_audio") or "music prompt"
    with _PLOT:
        png = spectrogram_grid({"": [(title, mono)]}, studio.sample_rate, result.wav.with_suffix(".png"), dpi=150)
    return str(result.wav), str(png), _stats(result), record


def _stats(result: Result) -> str:
    """The measured cost beside the result: seconds of music, wall seconds, real-time factor, passes per stage."""
    record = result.record
    made = record.get("seconds_added", result.seconds)
    wall = sum(record["seconds"].values())
    passes = " · ".join(f"{STAGE_NAMES.get(k, k)} {v}" for k, v in record["forward_passes"].items())
    return (f"**{made:g} s** of music in **{wall:.2f} s** ({wall / made:.2f} × real time) · seed {record['seed']} · "
            f"{record['steps']} steps · waited {record['waited_seconds']:.1f} s for the model  \n"
            f"forward passes: {passes}")
