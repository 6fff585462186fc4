"""The default `netcompress run` (the real one, offline) and its report in a real headless Chromium:
no console errors, no network requests, every variant shown, a screenshot that is not blank.
Chromium is Debian's package (installed by .ci/run)."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from netcompress.cli import main

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
FAMILY_VARIANTS = ["prune-weights", "prune-channels", "kd-student", "student-alone", "int8", "kmeans-huffman",
                   "low-rank", "separable", "early-exit", "deep-compression", "prune-channels-int8",
                   "deploy-onnx-int8"]
BUDGET_S = 600  # issue 8: at most 10 minutes on this 2-core machine


def find_or_install_chromium() -> str | None:
    """Debian's chromium if installed, else Playwright's own (installed now when the network allows).
    Without either: under CI (CI=true, as .ci/run sets) the test fails; elsewhere it is reported as
    not run, with the reason and the command that makes it run (never a silent pass)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    done = subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"], capture_output=True,
                          text=True, timeout=600)
    if done.returncode == 0:
        return None  # Playwright's bundled chromium
    reason = ("the report's browser check could NOT run: no chromium on this machine and `playwright install "
              f"chromium` failed ({(done.stderr or done.stdout).strip().splitlines()[-1:]}); install one with "
              "`apt-get install chromium` or `python -m playwright install chromium` and rerun")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "run"
    t0 = time.perf_counter()
    assert main(["run", "--out", str(out), "--quiet"]) == 0
    return out, time.perf_counter() - t0


@pytest.mark.timeout(900)
def test_default_run_meets_its_promises(default_run):
    out, seconds = default_run
    assert seconds < BUDGET_S
    entries = json.loads((out / "metrics.json").read_text())
    assert entries[0]["stage"] == "baseline" and entries[0]["accuracy"] >= 0.97  # issue 2: >= 97 %
    variants = {e["variant"] for e in entries}
    assert set(FAMILY_VARIANTS) <= variants
    by_variant = {e["variant"]: e for e in entries}  # last stage of each variant
    assert by_variant["prune-channels"]["params"] < entries[0]["params"] / 2
    assert by_variant["deep-compression"]["bytes"] * 20 < entries[0]["bytes"]
    packed = by_variant["kmeans-huffman"]
    archive = Path(packed["extra"]["archive"])
    assert packed["kind"] == "pack" and archive.suffix == ".ncz" and archive.stat().st_size == packed["bytes"]
    import netcompress as nc

    reloaded = nc.archive.unpack(archive)  # the archive alone gives the measured accuracy back
    assert nc.train.evaluate(reloaded, nc.data.load("mnist-5k")) == pytest.approx(packed["accuracy"])
    md = (out / "report.md").read_text()
    assert all(v in md for v in FAMILY_VARIANTS)
    assert 'id="wall-time"' in (out / "report.html").read_text()
    # issue 14: the shipped file, checked and timed in its runtime next to PyTorch eager
    dep = by_variant["deploy-onnx-int8"]
    info = dep["extra"]["export"]
    assert info["check"]["passed"] and info["int8"] and Path(info["path"]).suffix == ".onnx"
    assert info["latency"]["runtime_ms_b1"] > 0 and info["latency"]["eager_ms_b1"] > 0
    assert abs(dep["accuracy"] - by_variant["prune-channels"]["accuracy"]) <= 0.01
    assert "## Deployment" in md and 'id="deployment"' in (out / "report.html").read_text()


@pytest.mark.timeout(300)
def test_report_renders_in_chromium(default_run):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    out, _ = default_run
    chromium = find_or_install_chromium()
    page_url = (out / "report.html").resolve().as_uri()

    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_url, wait_until="load")
        text = page.inner_text("body")
        captions = page.eval_on_selector_all("figcaption", "els => els.map(e => e.textContent)")
        images = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        shot = out / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()

    assert errors == []
    external = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert external == [], external
    for name in ["baseline", *FAMILY_VARIANTS]:
        assert name in text, name
    # the charts issue 8 asks for: Pareto charts, per-layer sparsity, centroids, early-exit curve, training curves
    joined = " | ".join(captions)
    for needle in ("Accuracy vs size", "Accuracy vs latency", "Training curves", "per layer", "centroid", "average MACs"):
        assert needle.lower() in joined.lower(), (needle, captions)
    assert images and all(w > 0 for w in images)  # every embedded chart decoded
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 900 and pixels.std() > 10  # not a blank page
