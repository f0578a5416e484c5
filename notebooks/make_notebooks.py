"""Writes the notebooks of notebooks/ from the cells below (run: python notebooks/make_notebooks.py).

The notebooks are committed; this script keeps their source reviewable as plain Python.
"""
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).parent


def nb(cells):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, src in cells:
        n.cells.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
    return n


QUICKSTART = [
    ("md", "# energyprof quickstart\n\nProfile a tiny random-weight Llama, read the summary, look at tokens and layers, plot.\n"
           "The `synthetic` source gives *simulated* power with exact ground truth; on real hardware use `source=\"auto\"`."),
    ("code", "import os, tempfile, torch\nimport energyprof as ep\nfrom energyprof.tiny import tiny_model\n"
             "db = os.path.join(tempfile.mkdtemp(), 'runs.db')\nmodel = tiny_model('tiny-llama')"),
    ("code", "with ep.run(model, source='synthetic:power_w=20,active_w=15,period_ms=5', baseline_s=0.2, db=db, name='quickstart') as s:\n"
             "    with s.section('generate'):\n"
             "        out = model.generate(torch.tensor([[1, 2, 3, 4, 5]]), max_new_tokens=16, do_sample=False)\n"
             "summary = s.summary()\n"
             "{k: summary[k] for k in ('energy_j', 'net_energy_j', 'j_per_output_token', 'tokens_per_j', 'edp_js')}"),
    ("code", "assert summary['output_tokens'] == 16\n"
             "assert abs(s.tokens['energy_j'].sum() - summary['phases']['decode']['energy_j']) <= 1e-9 * summary['energy_j']\n"
             "summary['phases']"),
    ("md", "Per decode step (one row per generated token of each sequence) and per layer (mean over calls ± standard error):"),
    ("code", "s.tokens[['step', 'n_tokens', 'energy_j', 'samples_in_window', 'resolved']][:5]"),
    ("code", "s.layer_summary()[['layer', 'n_calls', 'energy_j', 'mean_energy_j', 'sem_energy_j', 'share']]"),
    ("code", "fig = s.plot('timeline', backend='matplotlib')\nfig2 = s.plot('layers', backend='matplotlib')"),
    ("code", "path = s.report(os.path.join(tempfile.mkdtemp(), 'quickstart.html'))\nprint(path, os.path.getsize(path) > 100_000)"),
]

COMPARE = [
    ("md", "# Compare architectures\n\nSeveral tiny random-weight architectures at different depths, the same prompt, "
           "J per output token against the number of layers and hidden size, with a fitted line. "
           "Simulated power follows the hooked modules (`active_w`), so deeper models cost more."),
    ("code", "import os, tempfile, numpy as np, torch\nimport energyprof as ep\nfrom energyprof.tiny import tiny_model\n"
             "db = os.path.join(tempfile.mkdtemp(), 'runs.db')\nprompt = torch.tensor([[1, 2, 3, 4, 5, 6]])"),
    ("code", "rows = []\nfor name in ('tiny-llama', 'tiny-qwen2', 'tiny-gpt2'):\n"
             "    for n_layers in (1, 2, 4):\n"
             "        model = tiny_model(name, n_layers=n_layers)\n"
             "        with ep.run(model, source='synthetic:power_w=2,active_w=30,period_ms=2', baseline_s=0, db=db,\n"
             "                    mode='minimal', tags=['compare']) as s:\n"
             "            model.generate(prompt, max_new_tokens=8, do_sample=False)\n"
             "        m = s.summary()\n"
             "        rows.append((name, n_layers, m['model']['hidden_size'], m['j_per_output_token'],\n"
             "                     m['energy_j'], m['duration_s']))\n"
             "[r[:4] for r in rows]"),
    ("md", "The simulated power is 2 W, plus 30 W while the model's forward runs, so every run's mean power "
           "lies between 2 W and 32 W whatever the machine; that is what the next cell checks. How much the "
           "forwards cost per layer depends on how fast this machine ran them (a loaded machine gives a "
           "different slope every time), so the fit is shown, not asserted."),
    ("code", "for name, n_layers, hidden, jpt, energy_j, duration_s in rows:\n"
             "    assert 2.0 * duration_s * (1 - 1e-9) <= energy_j <= 32.0 * duration_s * (1 + 1e-9), name\n"
             "x = np.array([r[1] for r in rows], float); y = np.array([r[3] for r in rows])\n"
             "slope, intercept = np.polyfit(x, y, 1)\nprint(f'J/token ≈ {intercept:.3g} + {slope:.3g} × layers')"),
    ("code", "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
             "for name in sorted({r[0] for r in rows}):\n"
             "    pts = [(r[1], r[3]) for r in rows if r[0] == name]\n"
             "    ax.plot(*zip(*pts), 'o-', label=name)\n"
             "xs = np.linspace(1, 4, 20); ax.plot(xs, intercept + slope * xs, 'k--', label='fit')\n"
             "ax.set_xlabel('decoder layers'); ax.set_ylabel('J per output token (simulated)'); ax.legend()"),
]

EXPLORE = [
    ("md", "# Explore stored runs\n\nQuery the store, compare two runs, export one."),
    ("code", "import os, tempfile, torch\nimport energyprof as ep\nfrom energyprof.tiny import tiny_model\n"
             "tmp = tempfile.mkdtemp(); db = os.path.join(tmp, 'runs.db')\nmodel = tiny_model('tiny-llama')\n"
             "ids = []\nfor p in (10, 30):\n"
             "    with ep.run(model, source=f'synthetic:power_w={p},period_ms=5', baseline_s=0, db=db, name=f'{p} W', tags=['explore']) as s:\n"
             "        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=8, do_sample=False)\n"
             "    ids.append(s.run_id)\nids"),
    ("code", "runs = ep.runs(db=db, tag='explore', sort='j_per_token')\n[(r['run_id'], r['name'], round(r['j_per_token'], 6)) for r in runs]"),
    ("code", "run = ep.load(ids[0], db=db)\nrun.summary()['energy_j'], len(run.samples), len(run.tokens)"),
    ("code", "cmp = ep.compare(ids[0], ids[1], db=db)\ncmp['figures']['energy_j'] if 'figures' in cmp else cmp"),
    ("code", "path = ep.export(ids[0], os.path.join(tmp, 'run.json'), format='json', db=db)\n"
             "new_id = ep.import_run(path, db=db)\nnew_id"),
    ("code", "ep.stats(db=db)"),
]

if __name__ == "__main__":
    for name, cells in (("quickstart", QUICKSTART), ("compare-architectures", COMPARE), ("explore-runs", EXPLORE)):
        nbf.write(nb(cells), HERE / f"{name}.ipynb")
        print("wrote", HERE / f"{name}.ipynb")
