"""The web demo: `melody demo` serves one MeLoDy model to people (a Gradio page) and to programs (an HTTP API).

- `server.py`: `Studio`, the one model behind one worker thread and a bound on the jobs waiting for it;
  `create_app`, the FastAPI app (`POST /api/generate` → WAV bytes, `GET /api/health`) with the page
  mounted at `/`; `serve`, which loads a bundle and runs it all on one port.
- `app.py`: the Gradio page (prompt, duration, steps, guidance, seed, an optional music prompt, continuation
  of the last result; audio, spectrogram, time and forward passes). No model math: it calls the `Studio`.
- `cli.py`: `demo_command`, the `melody demo` command.

Nothing here is imported by `import melody`; gradio, fastapi and uvicorn load only when the demo starts.
"""
