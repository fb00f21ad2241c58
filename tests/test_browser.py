"""The demo page in a real browser: Debian's chromium driven by Playwright, against `melody demo` with the bundled model.

Playwright drives the system's chromium (`executable_path`; Playwright's own browser download is never
used, so nothing leaves the machine). Every request to another host is aborted and listed, so the page is
shown to work offline. The bundled model is used (not a random one) so the screenshot shows real music;
it loads in a few seconds and makes 5 s of audio in about 1.5 s on 2 cores.

Select with `-m browser`; skipped only when no chromium binary is found. `MELODY_SCREENSHOT=docs/img/demo.png`
writes the page's picture there (the README's); without it, to the test's temporary folder.
"""

import io
import os
import shutil
from pathlib import Path

import httpx
import pytest
import soundfile as sf
from test_demo import start_demo, stop

from melody.bundled import BUNDLE

CHROMIUM = os.environ.get("MELODY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found (on Debian: apt-get install chromium; "
                                                          "or set MELODY_CHROMIUM to one)")]

PROMPT = "an upbeat funk groove with slap bass and drums"
SECONDS = 5
# The browser fetches the player's file and decodes it itself, at the file's own rate (no resampling).
DECODE = """async ([href, rate]) => {
    const bytes = await (await fetch(href)).arrayBuffer();
    const audio = await new OfflineAudioContext(1, 1, rate).decodeAudioData(bytes);
    return {length: audio.length, sampleRate: audio.sampleRate, channels: audio.numberOfChannels};
}"""


def test_a_prompt_typed_in_the_page_gives_music_of_the_asked_duration_in_a_real_browser(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    proc, url = start_demo(BUNDLE, "--max-queue", "2", "--max-duration", "10", "--threads", "2")
    outside: list[str] = []
    try:
        rate = httpx.get(f"{url}/api/health", timeout=30).json()["sample_rate"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                       else (outside.append(route.request.url), route.abort()))
            page.goto(f"{url}/")

            page.locator("#prompt textarea").fill(PROMPT)
            duration = page.locator("#duration input[type=number]")
            duration.fill(str(SECONDS))
            duration.press("Enter")
            expect(page.locator("#duration input[type=range]")).to_have_value(str(SECONDS))
            page.locator("#generate").click()
            expect(page.locator("#stats")).to_contain_text("forward passes", timeout=120_000)

            # the player holds the result: the browser decodes exactly SECONDS · rate samples from it
            link = page.locator("#result a[download]")
            href = link.get_attribute("href")
            assert page.evaluate(DECODE, [href, rate]) == {"length": SECONDS * rate, "sampleRate": rate, "channels": 1}
            info = sf.info(io.BytesIO(page.request.get(href).body()))
            assert (info.format, info.samplerate, info.frames) == ("WAV", rate, SECONDS * rate)
            expect(page.locator("#result time#duration")).to_have_text(f"0:{SECONDS:02d}")
            expect(page.locator("#stats")).to_contain_text(f"{SECONDS} s of music in")
            picture = page.locator("#spectrogram img")
            expect(picture).to_be_visible()
            assert picture.evaluate("img => img.complete && img.naturalWidth") >= 600
            shot = Path(os.environ.get("MELODY_SCREENSHOT") or tmp_path / "demo.png")
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 50_000

            # "Continue last result" extends what the player holds by the duration again
            page.locator("#continue").click()
            expect(link).not_to_have_attribute("href", href, timeout=120_000)
            longer = page.evaluate(DECODE, [link.get_attribute("href"), rate])
            assert longer["length"] == 2 * SECONDS * rate

            # bad input: a message on the page, not a traceback
            page.locator("#prompt textarea").fill("")
            page.locator("#generate").click()
            toast = page.get_by_test_id("toast-body")
            expect(toast).to_contain_text("a prompt is empty; describe the music", timeout=60_000)
            assert "Traceback" not in toast.inner_text()
            browser.close()
    finally:
        status, errors = stop(proc)
    assert status in (0, 130) and "Traceback" not in errors, errors
    assert outside == [], "the page asked another host for something"
