"""``energyprof predict``: fit or evaluate an energy predictor on stored runs, or predict a model's energy."""
from __future__ import annotations

from typing import Any, Dict, List

from ..analysis.predict import Predictor, cross_validate
from ..errors import UserError
from ..store.db import runs
from .common import _print_json, _table, add_db

__all__ = ["add_arguments", "cli_main"]


def add_arguments(sp) -> None:
    """The ``energyprof predict`` options (called by energyprof.cli)."""

    g = sp.add_mutually_exclusive_group()
    g.add_argument("--fit", action="store_true", help="fit a predictor on stored runs (write it with -o)")
    g.add_argument("--evaluate", action="store_true", help="k-fold cross-validated error on stored runs")
    sp.add_argument("-o", "--output", default=None, help="with --fit: where to write the predictor JSON")
    sp.add_argument("--model-json", default=None, help="a predictor written by --fit")
    sp.add_argument("--model", default=None, help="the model to predict for: tiny model name or local HF directory")
    sp.add_argument("--prompt-tokens", type=int, default=None)
    sp.add_argument("--output-tokens", type=int, default=None)
    sp.add_argument("--batch-size", type=int, default=1)
    sp.add_argument("--k", type=int, default=5, help="folds for --evaluate")
    sp.add_argument("--target", choices=["energy_j", "net_energy_j"], default="energy_j")
    sp.add_argument("--relative", action="store_true",
                    help="assume a run's scatter is a share of its energy (runs of very different sizes)")
    sp.add_argument("--terms", default=None, help="comma-separated terms (default: all, in priority order)")
    sp.add_argument("--filter-model", default=None, help="only runs of this model name")
    sp.add_argument("--tag", default=None, help="only runs with this tag")
    sp.add_argument("--source", default=None, help="only runs of this source kind")
    sp.add_argument("--json", action="store_true")
    add_db(sp)


def _stored(args) -> List[Dict[str, Any]]:
    return list(runs(args.db, model=args.filter_model, tag=args.tag, source=args.source, status="completed",
                     limit=None))


def cli_main(args) -> int:
    """``energyprof predict``: ``--fit -o model.json``, ``--evaluate``, or a prediction with ``--model-json``."""

    terms = [t.strip() for t in args.terms.split(",") if t.strip()] if args.terms else None
    noise = "relative" if args.relative else "absolute"
    if args.fit or args.evaluate:
        rows = _stored(args)
        try:
            if args.fit:
                p = Predictor.fit(rows, terms=terms, target=args.target, noise=noise)
            else:
                cv = cross_validate(rows, k=args.k, terms=terms, target=args.target, noise=noise)
        except ValueError as e:
            raise UserError(str(e))
        if args.fit:
            if args.output:
                p.save(args.output)
            if args.json:
                _print_json(dict(p.to_dict(), coefficients=p.coefficients()))
            else:
                sd = f"{p.resid_sd:.4g} J" if p.noise == "absolute" else f"{100 * p.resid_sd:.3g} %"
                _table(f"predictor: {p.target} on {p.n} runs (residual sd {sd}, R² {p.r2:.4f})",
                       ["term", "coefficient", "unit", "95% CI"],
                       [(k, f"{v['value']:.4g}", v["unit"], f"{v['ci95'][0]:.4g} .. {v['ci95'][1]:.4g}")
                        for k, v in p.coefficients().items()])
                if p.dropped_terms:
                    print("terms not identifiable on these runs (dropped): " + ", ".join(p.dropped_terms))
                if args.output:
                    print(f"predictor written to {args.output}")
            return 0
        summary = {k: v for k, v in cv.items() if k not in ("predicted", "actual")}
        if args.json:
            _print_json(summary)
        else:
            print(f"{cv['k']}-fold cross-validation on {cv['n']} runs: MAPE {cv['mape']:.2f} %, "
                  f"RMSE {cv['rmse']:.4g} J, MAE {cv['mae']:.4g} J, 95% interval coverage {100 * cv['coverage']:.0f} %")
        return 0
    if not args.model_json:
        raise UserError("predict needs --fit, --evaluate, or --model-json with --model, --prompt-tokens, "
                        "--output-tokens")
    if not args.model or args.prompt_tokens is None or args.output_tokens is None:
        raise UserError("a prediction needs --model, --prompt-tokens and --output-tokens")
    try:
        p = Predictor.load(args.model_json)
    except OSError as e:
        raise UserError(f"cannot read --model-json: {e}")
    except (ValueError, KeyError) as e:
        raise UserError(f"bad --model-json: {e}")
    try:
        r = p.predict(args.model, args.prompt_tokens, args.output_tokens, batch_size=args.batch_size)
    except (ValueError, TypeError) as e:
        raise UserError(str(e))
    if args.json:
        _print_json(r)
    else:
        lo, hi = r["pi95"]
        print(f"{args.model}: prompt {args.prompt_tokens} + {args.output_tokens} new tokens × batch "
              f"{args.batch_size}: {r['energy_j']:.4g} J (95% prediction interval {lo:.4g} .. {hi:.4g} J), "
              f"{r['j_per_output_token']:.4g} J per output token")
        if r["extrapolation"]:
            print("note: outside the range of the training runs in " + ", ".join(r["extrapolation"]) +
                  "; the interval assumes the linear model holds there")
    return 0
