"""The built-in corpus: scores and arrangements rendered with FluidSynth, plus recorded music (issue 2)."""

import contextlib
import io

# pyfluidsynth (imported by pretty_midi too) prints where it found libfluidsynth to stdout whenever $CI is set.
# That line would land in raw PCM on stdout (`melody stream --out -`) and in every caller's output, so the
# package imports it once, quietly. A machine without libfluidsynth still imports melody.
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(ImportError, OSError):
    import fluidsynth  # noqa: F401
