"""energyprof.views.report: the self-contained HTML report, its numbers, and a real browser rendering it."""
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from energyprof.views import report as ep_report
from energyprof.testing import synthetic_run
from energyprof.store.rundata import RunData

RUN = synthetic_run(n_layers=3, n_steps=10, seed=5)


class _Refs(HTMLParser):
    """Every URL-valued attribute of every tag, and the CSP meta content."""

    def __init__(self):
        super().__init__()
        self.urls, self.csp, self.scripts_with_src = [], None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href", "data", "poster", "action", "srcset", "xlink:href"):
            if a.get(k):
                self.urls.append((tag, k, a[k]))
        if tag == "script" and "src" in a:
            self.scripts_with_src.append(a["src"])
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "content-security-policy":
            self.csp = a.get("content")


def _write(tmp_path, run=RUN, name="r.html", **kw):
    p = ep_report.write_report(run, tmp_path / name, **kw)
    return p, p.read_text(encoding="utf-8")


def _visible_text(doc):
    """The page text outside <script> elements (what a reader sees)."""
    return re.sub(r"<script>.*?</script>", "", doc, flags=re.S)


# ----------------------------------------------------------------- self-contained
def test_report_loads_nothing_from_the_network(tmp_path):
    p, doc = _write(tmp_path)
    assert p == tmp_path / "r.html" and p.exists()
    refs = _Refs()
    refs.feed(doc)
    assert refs.scripts_with_src == []
    assert refs.urls == [], f"URL-valued attributes in the report: {refs.urls[:5]}"
    assert not re.search(r"<script[^>]+src\s*=", doc, flags=re.I)
    assert not re.search(r"@import|url\(\s*['\"]?https?:", _visible_text(doc), flags=re.I)
    assert refs.csp is not None and "default-src 'none'" in refs.csp and "connect-src 'none'" in refs.csp
    from plotly.offline import get_plotlyjs

    assert get_plotlyjs()[:2000] in doc  # plotly's JS is inline
    assert not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------- banner, cards, settings
def test_simulated_and_estimated_runs_say_so_in_large_type(tmp_path):
    _p, doc = _write(tmp_path)
    assert '<section class="banner simulated"' in doc
    assert re.search(r'<div class="big" id="label-warning">SIMULATED DATA', doc)
    s = RUN.summary()
    assert html.escape(s["source"]) in doc and html.escape(s["method"]) in doc
    _p, est = _write(tmp_path, synthetic_run(n_layers=1, n_steps=2, source_label="estimated"), "e.html")
    assert re.search(r'<div class="big" id="label-warning">ESTIMATED DATA', est)
    _p, meas = _write(tmp_path, synthetic_run(n_layers=1, n_steps=2, source_label="measured"), "m.html")
    assert 'id="label-warning"' not in meas and "SIMULATED" not in _visible_text(meas)
    assert '<section class="banner measured"' in meas


def test_cards_show_the_summary_numbers(tmp_path):
    s = RUN.summary()
    _p, doc = _write(tmp_path)
    text = _visible_text(doc)
    for key, unit in (("energy_j", "J"), ("net_energy_j", "J"), ("j_per_token", "J"), ("edp_js", "J·s"),
                      ("peak_power_w", "W")):
        assert ep_report.fmt_si(s[key], unit) in text, key
    assert f"{s['tokens_per_j']:.4g}" in text
    assert ep_report.fmt_si(0.5, "J") == "500 mJ" and ep_report.fmt_si(1234.0, "J") == "1.234 kJ"
    assert ep_report.fmt_si(float("nan"), "J") == "n/a"


def test_co2_and_cost_defaults_env_and_arguments(tmp_path, monkeypatch):
    e = RUN.summary()["energy_j"]
    monkeypatch.delenv(ep_report.CO2_ENV, raising=False)
    monkeypatch.delenv(ep_report.PRICE_ENV, raising=False)
    cc = ep_report.carbon_and_cost(e)
    assert (cc["co2_g_per_kwh"], cc["price_per_kwh"], cc["co2_origin"]) == (400.0, 0.15, "default")
    assert cc["co2_g"] == pytest.approx(e / 3.6e6 * 400.0) and cc["cost"] == pytest.approx(e / 3.6e6 * 0.15)
    _p, doc = _write(tmp_path)
    assert "at 400 gCO₂/kWh (default)" in doc and "at 0.15 $/kWh (default)" in doc
    assert ep_report.fmt_si(e / 3.6e6 * 400.0, "g") in doc

    monkeypatch.setenv(ep_report.CO2_ENV, "50")
    monkeypatch.setenv(ep_report.PRICE_ENV, "0.3")
    _p, doc = _write(tmp_path, name="env.html")
    assert f"at 50 gCO₂/kWh (${ep_report.CO2_ENV})" in doc and f"at 0.3 $/kWh (${ep_report.PRICE_ENV})" in doc
    assert ep_report.fmt_si(e / 3.6e6 * 50.0, "g") in doc

    _p, doc = _write(tmp_path, name="arg.html", co2_g_per_kwh=20, price_per_kwh=1.5)
    assert "at 20 gCO₂/kWh (argument)" in doc and "at 1.5 $/kWh (argument)" in doc
    assert f"{e / 3.6e6 * 1.5:.3g} $" in doc

    monkeypatch.setenv(ep_report.CO2_ENV, "lots")
    with pytest.raises(ValueError, match=ep_report.CO2_ENV):
        ep_report.write_report(RUN, tmp_path / "bad.html")
    with pytest.raises(ValueError, match="price"):
        ep_report.carbon_and_cost(1.0, co2_g_per_kwh=1, price_per_kwh=-2)
    assert not (tmp_path / "bad.html").exists()


# ----------------------------------------------------------------- tables and environment
def test_tables_hold_phases_tokens_layers_components_and_environment(tmp_path):
    _p, doc = _write(tmp_path)
    text = _visible_text(doc)
    sec = RUN.sections
    for r in sec[sec["kind"] == "phase"]:
        assert f"<td class=\"\">{r['name']}</td>" in text
        assert f">{float(r['energy_j']):.6g}<" in text
    for r in RUN.tokens:
        assert f">{float(r['j_per_token']):.6g}<" in text
    ls = RUN.layer_summary()
    for r in ls:
        assert f">{float(r['energy_j']):.6g}<" in text
    q = RUN.components["energy_j"][RUN.components["component"] == "q_proj"].sum()
    assert f">{q:.6g}<" in text  # the per-component table (q_proj is a leaf: own energy = energy)
    for r in RUN.component_summary()[:5]:
        assert f">{float(r['energy_j']):.6g}<" in text
    s = RUN.summary()
    for v in (s["chip"], s["model"]["name"], s["model"]["arch"], s["versions"]["torch"], s["device"]):
        assert html.escape(str(v)) in text
    assert "ane (J)" not in text  # a domain the source does not measure gets no column


def test_tables_aggregate_when_the_run_has_no_summaries(tmp_path):
    duck = SimpleNamespace(summary=RUN.summary, samples=RUN.samples, sections=RUN.sections, tokens=RUN.tokens,
                           layers=RUN.layers, components=RUN.components)
    _p, doc = _write(tmp_path, duck, "duck.html")
    for layer in range(3):
        want = RUN.layers["energy_j"][RUN.layers["layer"] == layer].sum()
        assert f">{want:.6g}<" in doc
        assert f">{100.0 * want / RUN.summary()['energy_j']:.6g}<" in doc


def test_report_of_a_minimal_run_notes_what_is_missing(tmp_path):
    minimal = RunData(RUN.summary(), samples=RUN.samples, sections=RUN.sections)
    _p, doc = _write(tmp_path, minimal, "min.html")
    assert 'id="plot-timeline"' in doc and 'id="plot-phases"' in doc
    assert 'id="plot-layers"' not in doc and 'id="plot-tokens"' not in doc
    assert "no decode steps" in doc and "mode=&#x27;minimal&#x27;" in doc


def test_all_text_is_escaped(tmp_path):
    evil = "<script>alert(1)</script>&"
    s = RUN.summary()
    s["name"] = evil
    s["model"]["name"] = evil
    s["tags"] = [evil]
    comp = RUN.components.copy()
    comp["component"][comp["component"] == "q_proj"] = "q</script><script>alert(2)//"
    run = RunData(s, samples=RUN.samples, sections=RUN.sections, tokens=RUN.tokens, layers=RUN.layers,
                  components=comp)
    _p, doc = _write(tmp_path, run, "evil.html")
    assert "<script>alert(" not in doc and "</script><script>alert" not in doc
    assert html.escape(evil) in doc
    assert doc.count("<script>") == doc.count("</script>") == 4  # error hook, plotly, figures, draw


# ----------------------------------------------------------------- a real browser
def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    pytest.fail("the browser test needs Chromium: apt-get install chromium (make sysdeps installs it)")


def _browse(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Open ``page`` in headless Chromium with every network path closed."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
           f"--user-data-dir={profile}", "--window-size=1280,4000", "--force-device-scale-factor=1",
           "--hide-scrollbars", "--virtual-time-budget=15000", *extra, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _status(dom: str):
    m = re.search(r"<html[^>]*>", dom)
    assert m, f"no <html> tag in the dumped DOM: {dom[:300]!r}"
    tag = m.group(0)
    st = re.search(r'data-energyprof-status="([^"]*)"', tag)
    rects = re.search(r'data-plot-rects="([^"]*)"', tag)
    return (html.unescape(st.group(1)) if st else None,
            json.loads(html.unescape(rects.group(1))) if rects else None)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser")
    page = ep_report.write_report(RUN, d / "report.html")
    shot = d / "shot.png"
    r = _browse(page, d / "profile", f"--screenshot={shot}", "--dump-dom")
    assert shot.exists(), f"Chromium wrote no screenshot: {r.stderr[-2000:]}"
    return page, shot, r.stdout


def test_browser_renders_every_plot_without_js_errors(rendered):
    page, shot, dom = rendered
    status, rects = _status(dom)
    assert status == "ok", f"the page reported: {status}"
    kinds = [k for k, _h, _w in ep_report.REPORT_PLOTS]
    assert sorted(rects) == sorted(f"plot-{k}" for k in kinds)
    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape[:2] == (4000, 1280)
    for pid, (x, y, w, h) in rects.items():
        assert w > 300 and h > 300 and y + h <= im.shape[0], (pid, x, y, w, h)
        region = im[y:y + h, x:x + w].astype(np.int16)
        drawn = np.any(region < 230, axis=2).mean()
        # axes, grid and text are grey; traces are coloured (plotly's title blue is below 60)
        colourful = (np.ptp(region, axis=2) > 60).mean()
        rgb = (region[..., 0].astype(np.int32) << 16) | (region[..., 1].astype(np.int32) << 8) | region[..., 2]
        colors = len(np.unique(rgb))
        assert drawn > 0.02, f"{pid}: only {drawn:.1%} of its area is drawn on"
        assert colourful > 0.003, f"{pid}: only {colourful:.2%} of its area is coloured (no traces drawn?)"
        assert colors > 100, f"{pid}: only {colors} colours"
    # control: the page margin right of the plots is blank, so the measure can tell
    margin = im[600:3000, 1262:1280]
    assert np.any(margin < 230, axis=2).mean() < 0.01


def test_browser_shows_the_resolution_next_to_the_figures_not_folded(rendered):
    """The resolution box and the notes above the token, layer and component figures and
    tables have a size on screen (a closed <details> gives its content none)."""
    _page, _shot, dom = rendered
    m = re.search(r'data-quality-rects="([^"]*)"', dom)
    assert m, "the page recorded no resolution elements"
    rects = json.loads(html.unescape(m.group(1)))
    assert "resolution#0" in rects
    ids = {k.split("#")[0] for k in rects}
    assert {"tokens-resolution", "calls-resolution"} <= ids
    assert sum(k.startswith("note#") for k in rects) >= 5  # above tokens, components, both heatmaps, the sankey
    for k, (_top, w, h) in rects.items():
        assert w > 200 and h > 8, (k, w, h)
    plots = json.loads(html.unescape(re.search(r'data-plot-rects="([^"]*)"', dom).group(1)))
    assert rects["resolution#0"][0] < min(y for _x, y, _w, _h in plots.values())  # above every plot


def test_resolution_lines_sit_beside_the_token_layer_and_component_figures(tmp_path):
    run = synthetic_run(n_layers=2, n_steps=8, seed=1, sample_period_ms=20)
    _p, doc = _write(tmp_path, run, "res.html")
    text = _visible_text(doc)
    res = run.summary()["resolution"]
    tok_line = f"tokens: {100 * res['tokens']:.0f} % resolved (20 ms samples; per-token energy is split by time"
    call_line = f"calls: {100 * res['calls']:.0f} % resolved (20 ms samples; per-call energy is split by time"
    assert 'id="resolution"' in text and html.escape(res["note"]) in text
    for kind, line in (("tokens", tok_line), ("components", call_line), ("layers", call_line),
                       ("layer_steps", call_line)):
        box = re.search(rf'<div class="plotbox[^"]*"><h3>[^<]*</h3>(.*?)<div class="plot" id="plot-{kind}"', text, re.S)
        assert box and html.escape(line) in box.group(1), kind
    # the token and call notes stand outside every <details>
    for ident in ("tokens-resolution", "calls-resolution"):
        at = text.index(f'id="{ident}"')
        assert text.rfind("<details", 0, at) <= text.rfind("</details>", 0, at), ident
    # systematic uncertainty and the warnings are on the page
    assert "systematic uncertainty of the source" in text
    warned = RunData(dict(run.summary(), warnings=["net energy -1 J is negative: the idle baseline ..."]),
                     **{n: run.array(n) for n in ("samples", "sections", "tokens", "layers", "components")})
    _p, doc = _write(tmp_path, warned, "warned.html")
    assert 'id="warnings"' in doc and "the idle baseline" in _visible_text(doc)


def test_browser_status_reports_script_errors_and_blocked_requests(rendered, tmp_path):
    page, _shot, _dom = rendered
    doc = page.read_text(encoding="utf-8")
    # a script error before the figures, and an image the page may not fetch
    broken = doc.replace("<script>window.__energyprofFigures",
                         "<script>null.boom();</script><script>window.__energyprofFigures", 1)
    broken = broken.replace("</main>", '<img src="http://example.invalid/x.png"></main>', 1)
    (tmp_path / "broken.html").write_text(broken, encoding="utf-8")
    status, _ = _status(_browse(tmp_path / "broken.html", tmp_path / "profile", "--dump-dom").stdout)
    assert status is not None and status.startswith("error:"), status
    assert "null" in status and "blocked img-src: http://example.invalid/x.png" in status, status


def test_docs_examples_run(capsys):
    text = (Path(__file__).resolve().parent.parent / "docs" / "report.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    for code in blocks:
        exec(compile(code, "docs/report.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("KiB") and "report.html" in out[0]
    assert out[1] == "400.0 0.15 argument"


def test_interrupted_and_nearly_empty_runs_still_get_a_report(tmp_path):
    s = RUN.summary()
    s["status"] = "interrupted"
    _p, doc = _write(tmp_path, RunData(s, samples=RUN.samples, sections=RUN.sections), "int.html")
    assert 'id="status-warning">This run was interrupted' in doc
    _p, doc = _write(tmp_path, RunData({}), "empty.html")
    assert "no power samples" in doc and "no phases" in doc and 'id="status-warning"' not in doc
    assert "<td class=\"\">n/a</td>" in doc or "n/a" in _visible_text(doc)
    _p, doc = _write(tmp_path, RunData({"energy_j": 2.0, "phases": {"prefill": {"energy_j": 1.5, "tokens": 3}}}),
                     "phases_only.html")
    assert 'id="plot-phases"' in doc and ">1.5<" in doc
