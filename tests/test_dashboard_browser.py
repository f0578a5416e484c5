"""energyprof serve in a real browser: headless Chromium driven by Selenium (Debian's
chromium-driver), going list -> detail -> compare -> live against the dashboard served by
uvicorn on loopback, checking the DOM, that the console has no errors, and saving the
screenshots of docs/serve.md (docs/img/serve-*.png: written when missing or with
ENERGYPROF_UPDATE_DOCS_IMG=1, so that a test run leaves the tree clean; always written
to the test's temporary directory and checked there).  The live test runs ``ep.run`` in another
process and checks that the page's stream shows the samples that process commits."""
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")

from energyprof._dtypes import measured_domains, total_of  # noqa: E402
from energyprof._dtypes import DOMAINS  # noqa: E402
from energyprof.store import db as dbm  # noqa: E402
from energyprof.views.dashboard import create_app  # noqa: E402

from _dashboard import NAMES, make_store, serving  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"


def _shot(driver, tmp_dir: Path, name: str) -> None:
    """Screenshot to the test's directory (checked: a full-size PNG), and to docs/img when asked."""
    from PIL import Image

    p = tmp_dir / name
    driver.save_screenshot(str(p))
    with Image.open(p) as im:
        assert im.size[0] == 1400 and im.size[1] >= 1000, im.size
    docs = IMG / name
    if os.environ.get("ENERGYPROF_UPDATE_DOCS_IMG") == "1" or not docs.exists():
        IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, docs)


def _exe(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    pytest.fail(f"the browser tests need {names[0]}: apt-get install chromium chromium-driver "
                "(make sysdeps installs them)")


@pytest.fixture(scope="module")
def driver():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-extensions", "--disable-background-networking", "--disable-sync",
              "--window-size=1400,1800", "--force-device-scale-factor=1", "--hide-scrollbars",
              "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1"):
        opts.add_argument(a)
    opts.binary_location = _exe("chromium", "chromium-browser", "google-chrome")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(_exe("chromedriver")), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    path = tmp_path_factory.mktemp("browser") / "runs.db"
    ids = make_store(path, deep=True)
    with serving(create_app(str(path))) as url:
        yield url, ids, str(path)


def _open(driver, url, timeout_s=30.0):
    """Load ``url`` and wait until the page says its plots are drawn (or an error)."""
    driver.get(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = driver.execute_script("return document.documentElement.getAttribute('data-energyprof-status')")
        if st and st != "loading":
            return st
        time.sleep(0.05)
    return "timeout"


def _console_errors(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def _drawn_plots(driver):
    """Ids of the plot elements holding a drawn plotly chart (an SVG with data traces)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.plot')).filter(function(e){"
        "return e.querySelector('.main-svg') && e.querySelectorAll('.trace, .sankey, .slice, .hm').length > 0;})"
        ".map(function(e){return e.id;});")


def test_list_detail_compare_in_a_browser(driver, site, tmp_path):
    url, ids, _path = site
    # the runs list: every run's name and label, and a plot
    assert _open(driver, url + "/") == "ok"
    body = driver.find_element("tag name", "body").text
    for n in NAMES + ("delta-deep",):
        assert n in body
    labels = [e.text.lower() for e in driver.find_elements("css selector", "#runs span.label")]
    assert sorted(labels) == sorted(["simulated", "measured", "estimated", "simulated"])
    assert "plot-history" in _drawn_plots(driver)
    _shot(driver, tmp_path, "serve-list.png")
    assert _console_errors(driver) == []

    # run detail, reached by clicking the run's name
    driver.find_element("link text", NAMES[1]).click()
    deadline = time.monotonic() + 30
    while "/runs/" not in driver.current_url and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open(driver, driver.current_url) == "ok"
    assert NAMES[1] in driver.find_element("tag name", "h1").text
    drawn = _drawn_plots(driver)
    assert {"plot-timeline", "plot-phases", "plot-tokens", "plot-sankey"} <= set(drawn), drawn
    assert "figure" in driver.find_element("id", "uncertainty").text
    _shot(driver, tmp_path, "serve-run.png")
    assert _console_errors(driver) == []

    # a deep run: the metric selector redraws the heatmap with the chosen metric
    assert _open(driver, f"{url}/runs/{ids[3]}") == "ok"
    assert "plot-deep" in _drawn_plots(driver) and "plot-heads" in _drawn_plots(driver)
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "deep-metric")).select_by_value("act_sparsity")
    deadline = time.monotonic() + 20
    shown = None
    while time.monotonic() < deadline:
        shown = driver.execute_script("return document.documentElement.getAttribute('data-deep-shown')")
        if shown:
            break
        time.sleep(0.05)
    assert shown == "ops:act_sparsity"
    title = driver.execute_script("return document.getElementById('plot-deep').layout.title.text")
    assert title.startswith("Activation sparsity per layer and operation")
    driver.execute_script("document.getElementById('deep').scrollIntoView()")
    _shot(driver, tmp_path, "serve-deep.png")
    assert _console_errors(driver) == []

    # compare, by ticking three runs in the list
    assert _open(driver, url + "/") == "ok"
    for rid in ids[:3]:
        driver.find_element("css selector", f'input.pick[value="{rid}"]').click()
    driver.find_element("id", "compare-button").click()
    deadline = time.monotonic() + 30
    while "/compare" not in driver.current_url and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open(driver, driver.current_url) == "ok"
    heads = [e.text for e in driver.find_elements("css selector", "#compare-table th.run-col a")]
    assert sorted(heads) == sorted(NAMES)
    assert {"plot-jpt", "plot-power"} <= set(_drawn_plots(driver))
    assert "different labels" in driver.find_element("id", "label-warning").text
    assert len(driver.find_elements("css selector", "td.best")) > 5
    _shot(driver, tmp_path, "serve-compare.png")
    assert _console_errors(driver) == []


_WRITER = textwrap.dedent("""
    import os, sys, time, torch, energyprof as ep
    from energyprof.tiny import tiny_model
    model = tiny_model("tiny-llama")
    with ep.run(model, source="synthetic:power_w=15,period_ms=5", baseline_s=0.5, db=sys.argv[1],
                name="live-run") as s:
        t_end = time.monotonic() + 60  # bounded: generates until the test says stop, at most a minute
        with torch.no_grad():
            while time.monotonic() < t_end and not os.path.exists(sys.argv[2]):
                model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=6, do_sample=False)
                time.sleep(0.05)
    print(s.run_id)
""")


def test_live_page_follows_a_run_in_another_process(driver, site, tmp_path):
    url, _ids, path = site
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, str(script), path, str(stop)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    try:
        rid = None
        deadline = time.monotonic() + 60
        while rid is None and time.monotonic() < deadline:
            running = dbm.runs(db=path, status="running")
            rid = running[0]["run_id"] if running else None
            time.sleep(0.1)
        assert rid is not None, proc.stderr.read() if proc.poll() is not None else "no running run appeared"
        assert _open(driver, f"{url}/live/{rid}") == "ok"
        live = driver.find_element("id", "live")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            n = int(live.get_attribute("data-samples") or 0)
            if n > 20 and live.get_attribute("data-phase") in ("prefill", "decode"):
                break
            time.sleep(0.1)
        assert live.get_attribute("data-phase") in ("prefill", "decode")
        assert int(live.get_attribute("data-tokens")) > 0
        assert float(live.get_attribute("data-energy-j")) > 0
        # the last sample the page drew is one that the other process committed, with its power
        t_last = int(live.get_attribute("data-last-t-start-ns"))
        with dbm.Store(path, readonly=True) as st:
            got = st.samples_after(rid, t_last - 1, limit=1)
        assert len(got) == 1 and int(got["t_start_ns"][0]) == t_last
        pw = np.array([[got[f"{d}_w"][0] for d in DOMAINS]])
        assert float(live.get_attribute("data-last-total-w")) == pytest.approx(
            float(total_of(pw, measured_domains(got))[0]), rel=1e-12)
        assert driver.find_element("id", "plot-live").find_elements("css selector", ".scatterlayer .trace")
        _shot(driver, tmp_path, "serve-live.png")
        # when the run ends, the page opens the run's own page
        stop.write_text("")
        assert proc.wait(60) == 0, proc.stderr.read()
        deadline = time.monotonic() + 30
        while not driver.current_url.endswith(f"/runs/{rid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert driver.current_url.endswith(f"/runs/{rid}")
        assert _open(driver, driver.current_url) == "ok"
        assert "live-run" in driver.find_element("tag name", "h1").text
        assert dbm.load(rid, db=path).summary()["status"] == "completed"
        assert _console_errors(driver) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
