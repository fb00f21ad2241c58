import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_shards import RATE, make_corpus

from melody.data.shards import ShardWriter, write_manifest


def melody(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "melody.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_the_commands():
    out = melody("--help")
    assert out.returncode == 0
    for command in ("data", "config"):
        assert command in out.stdout
    data = melody("data", "--help")
    for command in ("synth", "ingest", "check", "info", "spectrograms"):
        assert command in data.stdout


def test_config_show_applies_overrides():
    out = melody("config", "show", "--preset", "paper", "--set", "dpd.blocks=6")
    assert out.returncode == 0
    cfg = json.loads(out.stdout)
    assert cfg["preset"] == "paper" and cfg["dpd"]["blocks"] == 6 and cfg["dpd"]["hidden"] == 768


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    for args, message in [
        (("config", "show", "--set", "dpd.dept=8"), "unknown config key 'dpd.dept'"),
        (("config", "show", "--preset", "huge"), "unknown preset 'huge'"),
        (("data", "info", str(tmp_path / "nope")), "no such corpus folder"),
        (("data", "synth", "--out", str(tmp_path / "c"), "--hours", "-1"), "--hours must be positive"),
    ]:
        out = melody(*args)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
        assert "Traceback" not in out.stderr


def test_data_info_and_spectrograms(tmp_path):
    w = ShardWriter(tmp_path, "train", 8000)
    for i, style in enumerate(["rock", "jazz", "rock"]):
        w.add(f"k{i}", (0.3 * np.sin(np.arange(16000) * 0.1 * (i + 1))).astype(np.float32),
              {"caption": f"a {style} clip", "source": "procedural", "attributes": {"style": style}})
    w.flush()
    write_manifest(tmp_path, {"train": w.summary()}, sample_rate=8000, channels=1)
    info = melody("data", "info", str(tmp_path))
    assert info.returncode == 0 and "3 clips" in info.stdout
    png = tmp_path / "spec.png"
    out = melody("data", "spectrograms", str(tmp_path), "--out", str(png), "--per-group", "2")
    assert out.returncode == 0 and "2 rows" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def melody_one_thread(*args):
    # Tiny models: one intra-op thread is as fast, and far faster when the machine's cores are busy.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "melody.cli", *args], capture_output=True, text=True, timeout=300, env=env)


# A VAE small enough to train a step in a fraction of a second.
TINY_VAE = [f"data.sample_rate={RATE}", f"vae.sample_rate={RATE}", "vae.encoder_channels=16", "vae.decoder_channels=16",
            "vae.crop_seconds=0.1", "vae.mel_windows=64,256", "vae.mel_bins=10,40", "vae.stft_ffts=256",
            "vae.mpd_periods=2,3", "train.batch_size=2", "train.sample_every=0"]


def test_train_vae_writes_the_model_and_refuses_to_overwrite_a_run(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", clips=10, per_shard=3)
    run = tmp_path / "run"
    overrides = [*TINY_VAE, "vae.disc_start_step=1", "train.steps=2", "train.checkpoint_every=1", "train.num_workers=0"]
    args = ["train", "vae", "--data", str(corpus), "--out", str(run), "--preset", "tiny",
            *[a for o in overrides for a in ("--set", o)], "--no-progress"]
    out = melody_one_thread(*args)
    assert out.returncode == 0, out.stderr
    assert "trained vae to step 2" in out.stdout
    assert (run / "vae.safetensors").is_file() and json.loads((run / "config.json").read_text())["train"]["steps"] == 2

    again = melody_one_thread(*args)
    assert again.returncode == 2, again.stderr
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--resume" in lines[0], again.stderr

    missing = melody_one_thread("train", "vae", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run2"),
                                "--no-progress")
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no such corpus folder" in lines[0], missing.stderr
    assert not (tmp_path / "run2").exists()


def _as_from_a_terminal() -> None:
    # what a terminal's foreground job starts with; pytest itself may run as a background job, whose children
    # inherit SIGINT ignored, which the trainer (rightly) leaves ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _block_sigint() -> None:
    _as_from_a_terminal()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


@pytest.mark.parametrize("signum, preexec", [(signal.SIGINT, _as_from_a_terminal), (signal.SIGTERM, _as_from_a_terminal),
                                             (signal.SIGINT, _block_sigint)],
                         ids=["SIGINT", "SIGTERM", "SIGINT-blocked-by-the-parent"])
def test_an_interrupted_training_saves_and_resumes(tmp_path, signum, preexec):
    """Ctrl-C (SIGINT to the whole process group, workers included) or SIGTERM: the step under way
    finishes, a checkpoint is saved, one line says so, and --resume continues from it. Also when the trainer was
    started with SIGINT blocked (a mask is inherited across exec; multiprocessing blocks SIGINT while it spawns its
    helpers): the trainer unblocks the signals it catches."""
    corpus = make_corpus(tmp_path / "corpus", clips=10, per_shard=3)
    run = tmp_path / "run"
    overrides = [*TINY_VAE, "train.steps=100000", "train.log_every=1", "train.checkpoint_every=100000", "train.num_workers=1"]
    args = [sys.executable, "-m", "melody.cli", "train", "vae", "--data", str(corpus), "--out", str(run),
            *[a for o in overrides for a in ("--set", o)], "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            preexec_fn=preexec)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
            time.sleep(0.2)
        os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)
        timeout = 120
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # say whether the trainer itself went on or had exited while a process it left behind held its pipes
            survivors = subprocess.run(["ps", "-o", "pid,ppid,stat,args", "-s", str(proc.pid)], capture_output=True, text=True).stdout
            pytest.fail(f"trainer returncode {proc.poll()} {timeout} s after {signum.name}; its session: {survivors}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever of its session is left
            os.killpg(proc.pid, signal.SIGKILL)
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, err
    step = json.loads((run / "latest.json").read_text())["step"]
    assert step >= 3 and f"at step {step}; saved" in lines[0] and "--resume" in lines[0]
    assert not list((run / "checkpoints").glob("*.tmp"))

    extra = ["--set", f"train.steps={step + 2}"]
    resumed = melody_one_thread("train", "vae", "--data", str(corpus), "--out", str(run), "--resume", *extra, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"trained vae to step {step + 2}" in resumed.stdout
