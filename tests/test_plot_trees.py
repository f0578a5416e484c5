"""The call tree behind the module views (views.plot: _call_tree, the own energy per
component, the sankey's links, the sunburst's nodes), computed with grouped numpy passes,
against plain loops over the calls written from the definitions."""
import math

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof.store.rundata import RunData
from energyprof.tiny import tiny_model
from energyprof.views import plot as P


def node(r):
    return f"layer {int(r['layer'])}" if str(r["component"]) == "layer" else str(r["component"])


def own(comp, has_child):
    return comp + " (self)" if (has_child or comp == "layer") else comp


def loop_tree(calls):
    pos = {int(c): i for i, c in enumerate(calls["call_id"])}
    parent = [pos.get(int(p), -1) for p in calls["parent_id"]]
    self_j = [float(e) for e in calls["energy_j"]]
    for i, p in enumerate(parent):
        if p >= 0:
            self_j[p] -= float(calls["energy_j"][i])
    root, path = [], []
    for i in range(len(calls)):
        j, chain = i, []
        while j >= 0:
            chain.append(j)
            j = parent[j]
        root.append(chain[-1])
        path.append(tuple(node(calls[k]) for k in reversed(chain)))
    has_child = [False] * len(calls)
    for p in parent:
        if p >= 0:
            has_child[p] = True
    return parent, self_j, root, path, has_child


@pytest.fixture(scope="module", params=["standard", "nan-and-negative"])
def run(request):
    m = tiny_model("tiny-llama")
    with ep.run(m, source="synthetic:power_w=4,square_w=20,square_period_ms=2,period_ms=0.5", baseline_s=0,
                save=False) as s:
        m.generate(torch.tensor([[3, 4, 5, 6]]), max_new_tokens=3, do_sample=False)
    if request.param == "standard":
        return s
    comps = s.components.copy()
    comps["energy_j"][5] = np.nan                 # an unknown call (a long gap)
    attn = np.flatnonzero(comps["component"] == "attn")[:2]
    comps["energy_j"][attn] = 1e-12               # a container below its children: negative own energy
    return RunData(s.summary(), s.samples, s.sections, s.tokens, s.layers, comps)


def test_call_tree_equals_the_loop(run):
    tree = P._call_tree(run)
    calls = tree["calls"]
    parent, self_j, root, path, has_child = loop_tree(calls)
    assert tree["parent"].tolist() == parent and tree["root"].tolist() == root
    assert tree["has_child"].tolist() == has_child
    assert list(tree["path"]) == path and all(isinstance(p, tuple) for p in tree["path"])
    np.testing.assert_array_equal(tree["self_j"], np.array(self_j))
    assert max(len(p) for p in path) >= 3   # layer -> attn -> q_proj: real nesting


def test_own_energy_per_component_equals_the_loop(run):
    tree = P._call_tree(run)
    calls = tree["calls"]
    _, self_j, _, _, has_child = loop_tree(calls)
    agg, ok = {}, {}
    for i, r in enumerate(calls):
        k = own(str(r["component"]), has_child[i])
        agg[k] = agg.get(k, 0.0) + self_j[i]
        c = ok.setdefault(k, [0, 0])
        c[0] += bool(r["resolved"])
        c[1] += 1
    names = sorted(agg, key=lambda k: -agg[k] if not math.isnan(agg[k]) else 0)
    got_names, got_j, got_res = P._component_self_resolved(run)
    assert sorted(got_names) == sorted(agg)
    for n, j, r in zip(got_names, got_j, got_res):
        assert (j == agg[n]) or (math.isnan(j) and math.isnan(agg[n])), n
        assert r == ok[n][0] / ok[n][1]
    if not any(math.isnan(v) for v in agg.values()):
        assert got_names == names


def test_sankey_links_equal_adding_call_by_call(run):
    tree = P._call_tree(run)
    calls = tree["calls"]
    parent, self_j, root, _, has_child = loop_tree(calls)
    names, e, _ = P._phase_data(run)
    phase_e = dict(zip(names, e))
    links, order = {}, [("run", "run")]

    def add(a, b, v):
        if not (v > 0.0) or not math.isfinite(v):
            return
        for k in (a, b):
            if k not in order:
                order.append(k)
        links[(a, b)] = links.get((a, b), 0.0) + v

    s = run.summary()
    run_e = float(s["energy_j"])
    for p in names:
        add(("run", "run"), ("phase", p), float(phase_e[p]))
    add(("run", "run"), ("other", "outside phases"), run_e - float(np.nansum(e)))
    used = {}
    for i in range(len(calls)):
        if parent[i] >= 0:
            continue
        p = "prefill" if int(calls["step"][i]) == 0 else "decode"
        if p not in phase_e:
            continue
        add(("phase", p), ("top", node(calls[i])), float(calls["energy_j"][i]))
        used[p] = used.get(p, 0.0) + float(calls["energy_j"][i])
    for p, u in used.items():
        add(("phase", p), ("other", f"{p}: outside hooked modules"), float(phase_e[p]) - u)
    for i in range(len(calls)):
        if has_child[root[i]]:
            add(("top", node(calls[root[i]])), ("component", own(str(calls["component"][i]), has_child[i])), self_j[i])
    d = P._sankey_data(run)
    assert d["nodes"] == order
    got = {(d["nodes"][a], d["nodes"][b]): v for a, b, v in zip(d["source"], d["target"], d["value"])}
    assert list(got) == list(links)
    for k, v in links.items():
        assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-18), k


def test_sunburst_nodes_equal_the_loop(run):
    pytest.importorskip("plotly")
    tree = P._call_tree(run)
    _, self_j, _, path, _ = loop_tree(tree["calls"])
    agg = {}
    for pth, v in zip(path, self_j):
        agg[pth] = agg.get(pth, 0.0) + max(v, 0.0)
    for pth in list(agg):
        for k in range(1, len(pth)):
            agg.setdefault(pth[:k], 0.0)
    sb = P.plot(run, kind="components", backend="plotly").data[0]
    assert list(sb.ids) == ["/".join(p) for p in agg]
    np.testing.assert_allclose(np.array(sb.values, float), np.array(list(agg.values())), rtol=1e-12, equal_nan=True)
