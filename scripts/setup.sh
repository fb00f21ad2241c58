#!/usr/bin/env bash
# Set up melody on a fresh Debian/Ubuntu machine: system packages, a virtual environment in .venv,
# the package (editable) with its dev extras, and musicnn's bundled tagger weights.
# Safe to re-run: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# FluidSynth + General MIDI soundfonts render the built-in corpus; drascula-music and asc-music are
# the real recordings it cuts into clips (see docs/corpus.md); chromium is the browser the demo's browser
# test drives with Playwright (tests/test_browser.py; Playwright's own browser download is not used).
DEBS=(fluidsynth libfluidsynth3 fluid-soundfont-gm timgm6mb-soundfont drascula-music asc-music chromium)
if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${DEBS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
else
  echo "setup: no apt-get here; install FluidSynth, a GM soundfont and drascula-music/asc-music yourself" >&2
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch is pinned (2.13.0, CPU wheel where pip finds one); an unpinned torch would pull CUDA builds.
.venv/bin/python -m pip install -q -e ".[dev]"
# musicnn ships the pretrained tagger's weights; its own code needs TensorFlow 1 (not installable on
# Python 3.11), so only the package data is used: install it without its dependencies.
.venv/bin/python -m pip install -q --no-deps "musicnn==0.1.0"
# librosa JIT-compiles with numba and caches the machine code in site-packages; two processes that
# compile the same function at once (test workers, corpus-build workers) can corrupt that cache and
# segfault later. Compile everything melody uses once, here, in one process.
.venv/bin/python - <<'PY'
import numpy as np
from melody.data.synth.recordings import measure_attributes
from melody.ears.musicnn import log_mel
x = (0.1 * np.sin(np.arange(24_000 * 4) * 0.1)).astype(np.float32)
measure_attributes(x, 24_000)
log_mel(x, 24_000)
PY
echo "setup: ready (.venv/bin/melody)"
