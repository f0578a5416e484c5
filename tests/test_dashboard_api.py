"""energyprof serve: the dashboard's API, pages, actions and security through an ASGI test client."""
import io
import json
import re
import zipfile
from html.parser import HTMLParser

import numpy as np

import pytest

import energyprof as ep

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from energyprof import _core, _reference  # noqa: E402
from energyprof._dtypes import DOMAINS  # noqa: E402
from energyprof.store import db as dbm  # noqa: E402
from energyprof.views.dashboard import create_app  # noqa: E402
from energyprof.views.dashboard.data import LiveEnergy, parse_ids, parse_run_id, BadRequest  # noqa: E402

from _dashboard import NAMES, make_store  # noqa: E402

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("dash") / "runs.db"
    ids = make_store(path, deep=True)
    return str(path), ids


@pytest.fixture
def client(store):
    return TestClient(create_app(store[0]), base_url=BASE)


def _events(text):
    """Server-sent events as (name, data) pairs."""
    out = []
    for block in text.split("\n\n"):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if name:
            out.append((name, data))
    return out


# ----------------------------------------------------------------- the JSON API
def test_api_runs_lists_the_saved_runs_with_their_labels(client, store):
    _path, ids = store
    r = client.get("/api/runs")
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 4
    by_name = {x["name"]: x for x in body["runs"]}
    assert set(NAMES) <= set(by_name)
    assert [by_name[n]["source_label"] for n in NAMES] == ["simulated", "measured", "estimated"]
    assert by_name["delta-deep"]["source_label"] == "simulated" and by_name["delta-deep"]["mode"] == "deep"
    want = dbm.load(ids[1], db=store[0]).summary()
    assert by_name["bravo-measured"]["j_per_output_token"] == want["j_per_output_token"]


def test_api_runs_filters_sort_and_pages(client, store):
    path, ids = store
    assert [x["name"] for x in client.get("/api/runs?label=measured").json()["runs"]] == ["bravo-measured"]
    assert client.get("/api/runs?q=charlie").json()["total"] == 1
    assert client.get("/api/runs?tag=n2").json()["runs"][0]["name"] == "charlie-estimated"
    assert client.get("/api/runs?until=2026-01-02").json()["total"] == 1
    assert client.get("/api/runs?since=2026-01-02&until=2026-01-04").json()["total"] == 2
    got = [x["run_id"] for x in client.get("/api/runs?sort=j_per_output_token&order=asc").json()["runs"]]
    jpt = {i: dbm.load(i, db=path).summary()["j_per_output_token"] for i in ids}
    assert got == sorted(ids, key=lambda i: jpt[i])
    page2 = client.get("/api/runs?sort=j_per_output_token&order=asc&limit=2&offset=2").json()
    assert [x["run_id"] for x in page2["runs"]] == got[2:] and page2["total"] == 4
    for bad in ("label=guessed", "sort=nonsense", "limit=0", "limit=x", "order=up", "status=done"):
        r = client.get(f"/api/runs?{bad}")
        assert r.status_code == 400, bad
        assert r.json()["detail"]


def test_request_text_never_becomes_sql(client, store):
    evil = "x' OR 1=1; DROP TABLE runs; --"
    r = client.get("/api/runs", params={"q": evil, "model": evil, "tag": evil})
    assert r.status_code == 200 and r.json()["total"] == 0
    assert client.get("/api/runs").json()["total"] == 4
    for bad in ("1;DROP TABLE runs", "-1", "0", "1e3", "99999999999999999999", "１"):
        assert client.get(f"/api/runs/{bad}").status_code == 400, bad
        assert client.get(f"/runs/{bad}").status_code == 400, bad
    assert client.get("/api/runs/424242").status_code == 404
    assert "runs.db" not in client.get("/api/runs/424242").text  # the store's path is not told


def test_ids_are_parsed_strictly():
    assert parse_ids("3,1,2") == [3, 1, 2] and parse_run_id(" 7 ") == 7
    for bad in ("", "1", "1,1", "1,,2", "1,2,x", ",".join(str(i) for i in range(1, 12)), "1,-2"):
        with pytest.raises(BadRequest):
            parse_ids(bad)


def test_api_run_has_the_summary_and_uncertainty(client, store):
    path, ids = store
    body = client.get(f"/api/runs/{ids[0]}").json()
    want = dbm.load(ids[0], db=path)
    assert body["summary"]["energy_j"] == want.summary()["energy_j"] and body["summary"]["source_label"] == "simulated"
    assert body["rows"]["samples"] == len(want.samples) and body["rows"]["tokens"] == len(want.tokens)
    dec = body["efficiency"]["decode_j_per_output_token"]
    jpt = want.tokens["j_per_token"]
    assert dec["value"] == pytest.approx(jpt.mean(), rel=1e-12)
    # the page shows the analysis' own figure (its block standard error over the independent
    # samples is proven in tests/test_resolution.py): same value, se and n, n never more than
    # the samples the decode spans + 1
    lib = ep.efficiency(want)["decode_j_per_output_token"]
    assert dec["n"] == lib["n"] and (dec["se"] is None) == np.isnan(lib["se"])
    if dec["se"] is not None:
        assert dec["se"] == pytest.approx(lib["se"], rel=1e-12)
    dsec = want.sections[want.sections["name"] == "decode"][0]
    spanned = np.sum((want.samples["t_end_ns"] > dsec["t_start_ns"]) & (want.samples["t_start_ns"] < dsec["t_end_ns"]))
    assert dec["n"] <= spanned + 1


def test_api_samples_are_downsampled_min_max_and_mean(client, store):
    path, ids = store
    run = dbm.load(ids[2], db=path)
    s = run.samples
    body = client.get(f"/api/runs/{ids[2]}/samples?max_points=40").json()
    assert body["points"] <= 40 and body["n_samples"] == len(s) and sum(body["n"]) == len(s)
    assert body["source_label"] == "estimated" and "ane" not in body["series"]
    t0 = run.summary()["t_origin_ns"]
    for k in (0, 17, body["points"] - 1):
        a, b = body["t_start_s"][k] * 1e9 + t0, body["t_end_s"][k] * 1e9 + t0
        inside = (s["t_start_ns"] >= a - 1) & (s["t_end_ns"] <= b + 1)
        assert inside.sum() == body["n"][k]
        g = s["gpu_w"][inside]
        assert body["series"]["gpu"]["min_w"][k] == g.min() and body["series"]["gpu"]["max_w"][k] == g.max()
        dt = (s["t_end_ns"] - s["t_start_ns"])[inside]
        assert body["series"]["gpu"]["mean_w"][k] == pytest.approx((g * dt).sum() / dt.sum(), rel=1e-12)
        # package and dram are measured: the total is package + dram (energyprof._dtypes.total_rule)
        assert body["series"]["total"]["max_w"][k] == (s["package_w"] + s["dram_w"])[inside].max()
    for bad in ("1", "0", "x", "1000000"):
        assert client.get(f"/api/runs/{ids[2]}/samples?max_points={bad}").status_code == 400, bad


def test_api_compare_of_three_runs(client, store):
    path, ids = store
    body = client.get(f"/api/compare?ids={ids[0]},{ids[1]},{ids[2]}").json()
    assert body["names"] == list(NAMES) and body["label_mismatch"] is True
    vals = [dbm.load(i, db=path).summary()["energy_j"] for i in ids[:3]]
    e = body["figures"]["energy_j"]
    assert e["values"] == vals and e["best"] == int(np.argmin(vals)) and e["worst"] == int(np.argmax(vals))
    assert e["sigma"] == pytest.approx(float(np.std(vals, ddof=1)))
    assert client.get("/api/compare?ids=1").status_code == 400
    assert client.get(f"/api/compare?ids={ids[0]},424242").status_code == 404


def test_api_figure_serves_deep_metrics(client, store):
    _path, ids = store
    deep = ids[3]
    for kind, metric in (("ops", "energy_j"), ("ops", "act_mean"), ("layers", "power_w"), ("heads", "entropy"),
                         ("layer_steps", "duration_s")):
        r = client.get(f"/api/runs/{deep}/figure?kind={kind}&metric={metric}")
        assert r.status_code == 200, (kind, metric, r.text[:200])
        fig = r.json()
        assert fig["data"][0]["type"] == "heatmap"
    r = client.get(f"/api/runs/{ids[0]}/figure?kind=ops")
    assert r.status_code == 404 and "mode='deep'" in r.json()["detail"]
    assert client.get(f"/api/runs/{ids[0]}/figure?kind=layers&metric=act_mean").status_code == 404
    assert client.get(f"/api/runs/{deep}/figure?kind=layers&metric=bogus").status_code == 400
    assert client.get(f"/api/runs/{deep}/figure?kind=bogus").status_code == 400


def test_stream_of_a_finished_run_sends_its_samples_then_ends(client, store):
    path, ids = store
    r = client.get(f"/api/runs/{ids[0]}/stream")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ev = _events(r.text)
    assert ev[-1] == ("end", {"status": "completed", "url": f"/runs/{ids[0]}"})
    s = dbm.load(ids[0], db=path).samples
    got = [x for name, d in ev if name == "samples" for x in d["t_start_ns"]]
    assert got == s["t_start_ns"].tolist()
    tot = [x for name, d in ev if name == "samples" for x in d["total_w"]]
    np.testing.assert_array_equal(tot, s["package_w"] + s["dram_w"])


# ----------------------------------------------------------------- live energy
@pytest.mark.parametrize("interval", [True, False])
def test_live_energy_equals_one_integration_of_every_sample(interval):
    from test_levels import _samples

    rng = np.random.default_rng(5)
    n = 997
    s = _samples(n, seed=5, interval=interval, nan_gaps=False)
    t_start = int(s["t_start_ns"][150]) + 12345  # the run starts inside a sample, after the baseline
    live = LiveEnergy()
    cuts = sorted(rng.choice(np.arange(1, n), 25, replace=False).tolist())
    known_at = 90  # the start becomes known after a few chunks (the saver writes it with them)
    for a, b in zip([0] + cuts, cuts + [n]):
        live.feed(s[a:b], t_start if a >= known_at else None)
    end = int(s["t_end_ns"][-1])
    want, _f, _c = _reference.integrate(s, np.array([[t_start, end]]))
    got = live.domains_j()
    assert "ane" not in got
    for j, d in enumerate(DOMAINS):
        if d != "ane":
            assert got[d] == pytest.approx(want[0, j], rel=1e-10), d
    assert live.total_j == pytest.approx(want[0, DOMAINS.index("package")] + want[0, DOMAINS.index("dram")],
                                         rel=1e-10)  # rule: package + dram
    assert live.n_samples == n


# ----------------------------------------------------------------- pages
class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls, self.script_nonces, self.forms = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "data", "poster", "srcset"):
            if a.get(k):
                self.urls.append((tag, k, a[k]))
        if tag == "link" and a.get("href"):
            self.urls.append((tag, "href", a["href"]))
        if tag == "script":
            self.script_nonces.append(a.get("nonce"))
        if tag == "form":
            self.forms.append((a.get("method"), a.get("action")))


def test_pages_are_self_contained_with_a_nonce_csp(client, store):
    _path, ids = store
    for url in ("/", f"/runs/{ids[0]}", f"/compare?ids={ids[0]},{ids[1]},{ids[2]}", "/docs", "/compare"):
        r = client.get(url)
        assert r.status_code == 200, url
        csp = r.headers["content-security-policy"]
        m = re.search(r"script-src 'nonce-([^']+)'", csp)
        assert m and "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline'" not in \
            csp.split("style-src")[0], (url, csp)
        p = _Page()
        p.feed(r.text)
        assert p.urls == [], (url, p.urls[:3])  # nothing loaded from anywhere
        assert p.script_nonces and set(p.script_nonces) == {m.group(1)}, url
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    a, b = client.get("/"), client.get("/")
    assert a.headers["content-security-policy"] != b.headers["content-security-policy"]  # a fresh nonce each time
    from plotly.offline import get_plotlyjs

    assert get_plotlyjs()[:2000] in a.text


def test_pages_show_every_run_name_and_label(client, store):
    _path, ids = store
    text = client.get("/").text
    for n in NAMES:
        assert f'>{n}</a>' in text
    rows = re.findall(r'<tr class="run-row row-(\w+)" data-run-id="(\d+)"', text)
    assert len(rows) == 4 and {lab for lab, _ in rows} == {"simulated", "measured", "estimated"}
    assert text.count('<span class="label ') >= 4
    det = client.get(f"/runs/{ids[1]}").text
    assert "bravo-measured" in det and 'id="plot-timeline"' in det and 'id="uncertainty"' in det
    assert "± SE" in det and 'id="actions"' in det
    deep = client.get(f"/runs/{ids[3]}").text
    assert 'id="deep-metric"' in deep and 'value="act_sparsity"' in deep and 'id="plot-heads"' in deep
    cmp_ = client.get(f"/compare?ids={ids[0]},{ids[1]},{ids[2]}").text
    assert all(n in cmp_ for n in NAMES) and 'id="label-warning"' in cmp_
    assert 'td class="num best"' in cmp_ and 'td class="num worst"' in cmp_


def test_escaped_names_in_pages(tmp_path):
    evil = "<script>alert(1)</script>"
    from energyprof.testing import synthetic_run
    from energyprof.store.rundata import RunData

    path = str(tmp_path / "e.db")
    make_store(path)
    r = synthetic_run(n_layers=1, n_steps=2)
    s = r.summary()
    s["name"] = evil
    s["model"]["name"] = evil
    with dbm.Store(path) as st:
        assert st.save(RunData(s, samples=r.samples, sections=r.sections, tokens=r.tokens)) == 4
    dbm.set_tags(1, [evil], db=path)
    c = TestClient(create_app(path), base_url=BASE)
    for url in ("/", "/runs/1", "/runs/4", "/compare?ids=4,2"):
        t = c.get(url).text
        assert evil not in t and "&lt;script&gt;alert(1)&lt;/script&gt;" in t, url


def test_live_page_of_a_finished_run_goes_to_its_page(client, store):
    _path, ids = store
    r = client.get(f"/live/{ids[0]}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/runs/{ids[0]}"


# ----------------------------------------------------------------- security
def test_token_is_checked_on_every_request(store):
    c = TestClient(create_app(store[0], token="s3cret-token"), base_url=BASE)
    for url in ("/", "/api/runs", "/api/runs/1", "/docs", "/openapi.json", "/nowhere", "/api/runs/1/stream"):
        r = c.get(url)
        assert r.status_code == 401, url
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert c.get("/api/runs", headers={"Authorization": "Bearer wrong-token!"}).status_code == 401
    assert c.get("/api/runs?token=wrong-token!").status_code == 401
    assert c.post("/runs/1/delete", data={"csrf": "x", "confirm": "yes"}).status_code == 401
    assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    r = c.get("/?token=s3cret-token")
    assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    assert c.get("/api/runs").status_code == 200  # the cookie that ?token= set
    c.cookies.clear()
    assert c.get("/api/runs").status_code == 401
    # with a token any Host is answered; without one only loopback names are
    assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret-token", "Host": "box.lan:8765"}).status_code == 200
    plain = TestClient(create_app(store[0]), base_url=BASE)
    assert plain.get("/api/runs", headers={"Host": "attacker.example"}).status_code == 400
    for host in ("localhost:8765", "127.0.0.1", "[::1]:8765"):
        assert plain.get("/api/runs", headers={"Host": host}).status_code == 200, host
    with pytest.raises(ValueError, match="at least 8"):
        create_app(store[0], token="short")


def test_actions_need_the_csrf_token_and_work(tmp_path):
    path = str(tmp_path / "a.db")
    ids = make_store(path)
    app = create_app(path)
    c = TestClient(app, base_url=BASE)
    csrf = app.state.csrf
    assert f'name="csrf" value="{csrf}"' in c.get(f"/runs/{ids[0]}").text
    assert c.post(f"/runs/{ids[0]}/delete", data={"confirm": "yes"}).status_code == 403
    assert c.post(f"/runs/{ids[0]}/delete", data={"confirm": "yes", "csrf": "forged"}).status_code == 403
    r = c.post(f"/runs/{ids[0]}/delete", data={"confirm": "yes", "csrf": csrf},
               headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert len(dbm.runs(db=path)) == 3
    # tag: add then remove
    r = c.post(f"/runs/{ids[0]}/tags", data={"csrf": csrf, "action": "add", "tag": "keep me"}, follow_redirects=False)
    assert r.status_code == 303 and dbm.load(ids[0], db=path).summary()["tags"] == ["demo", "n0", "keep me"]
    c.post(f"/runs/{ids[0]}/tags", data={"csrf": csrf, "action": "remove", "tag": "demo"})
    assert dbm.load(ids[0], db=path).summary()["tags"] == ["n0", "keep me"]
    assert c.post(f"/runs/{ids[0]}/tags", data={"csrf": csrf, "action": "add", "tag": "x" * 65}).status_code == 400
    # export: JSON reads back as the same run; CSV is a zip of the tables
    r = c.post(f"/runs/{ids[1]}/export", data={"csrf": csrf, "format": "json"})
    assert r.status_code == 200 and 'filename="run-' in r.headers["content-disposition"]
    (tmp_path / "x.json").write_bytes(r.content)
    back = dbm.load(dbm.import_run(str(tmp_path / "x.json"), db=path), db=path)
    orig = dbm.load(ids[1], db=path)
    assert back.summary()["energy_j"] == orig.summary()["energy_j"]
    for f in orig.samples.dtype.names:
        np.testing.assert_array_equal(back.samples[f], orig.samples[f])
    r = c.post(f"/runs/{ids[1]}/export", data={"csrf": csrf, "format": "csv"})
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert f"run-{ids[1]}/run.csv" in names and f"run-{ids[1]}/samples.csv" in names
    # delete, with the confirmation
    assert c.post(f"/runs/{ids[0]}/delete", data={"csrf": csrf}).status_code == 400
    r = c.post(f"/runs/{ids[0]}/delete", data={"csrf": csrf, "confirm": "yes"}, follow_redirects=False)
    assert r.status_code == 303 and ids[0] not in [x["run_id"] for x in dbm.runs(db=path)]


def test_read_only_has_no_actions_and_opens_the_store_read_only(tmp_path):
    path = str(tmp_path / "ro.db")
    ids = make_store(path)
    app = create_app(path, read_only=True)
    c = TestClient(app, base_url=BASE)
    page = c.get(f"/runs/{ids[0]}").text
    p = _Page()
    p.feed(page)
    assert [f for f in p.forms if f[0] == "post"] == [] and 'id="read-only"' in page
    for action, data in (("delete", {"confirm": "yes"}), ("tags", {"tag": "t"}), ("export", {"format": "json"})):
        r = c.post(f"/runs/{ids[0]}/{action}", data=dict(data, csrf=app.state.csrf))
        assert r.status_code == 403 and "read-only" in r.text
    assert len(dbm.runs(db=path)) == 3
    ro = dbm.Store(path, readonly=True)
    with pytest.raises(PermissionError):
        dbm.set_tags(ids[0], ["x"], db=ro)
    ro.close()
    with pytest.raises(FileNotFoundError):
        create_app(str(tmp_path / "missing.db"), read_only=True)
