"""report.html in a real headless Chromium: no console errors, no network requests, every variant
shown, a screenshot that is not blank. Chromium is Debian's package (installed by .ci/run)."""
import shutil
import textwrap

import numpy as np
import pytest

from netcompress.recipe import run_recipe

RECIPE = """\
name: browser
data: digits
model: lenet300
train: {epochs: 1}
measure: {latency: true, min_run_time: 0.02}
stages:
  - finetune: {epochs: 1}
variants:
  - name: alpha-variant
    from: baseline
    stages: [{train: {epochs: 1, lr: 0.01}}]
  - name: beta-variant
    from: finetune
    stages: [{finetune: {epochs: 1}}]
"""

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.mark.timeout(300)
def test_report_renders_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is required for this test (apt-get install chromium; .ci/run does it)"
    (tmp_path / "r.yaml").write_text(textwrap.dedent(RECIPE))
    res = run_recipe(tmp_path / "r.yaml", out=tmp_path / "run", progress=False)
    page_url = (res.out / "report.html").resolve().as_uri()

    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_url, wait_until="load")
        text = page.inner_text("body")
        images = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()

    assert errors == []
    external = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert external == [], external
    for name in ("baseline", "alpha-variant", "beta-variant", "main (finetune)"):
        assert name in text, name
    assert images and all(w > 0 for w in images)  # every embedded chart decoded
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 900 and pixels.std() > 10  # not a blank page
