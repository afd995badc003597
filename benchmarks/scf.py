"""SCF iterations and wall time saved by starting PySCF from a predicted density, against the model's ε_mae.

    python -m benchmarks scf [--models demo,qm9] [--molecules 8] [--guesses minao,atom,huckel] [--out FILE]

On QM9 molecules with indices above 100,000 (outside cdp's training range) the data recipe's SCF
(GTH-PBE, gth-dzvp, PBE, density fitting, grids level 1, conv_tol 1e-9) runs from PySCF's guesses (once
per molecule) and from each model's predicted density (``cdp``). Per guess: iterations (``mf.cycles``),
SCF seconds and guess + SCF seconds, mean ± standard error over the molecules. Per model, one point:
ε_mae = 100 · ∫|ρ_model − ρ_SCF| / ∫ρ_SCF on PySCF's integration grid (the model's raw density, before
rescaling to N) against the saving in iterations and in wall time relative to ``minao`` (PySCF's default).
A model name that does not load (e.g. ``qm9`` before it is shipped) is skipped with a message. Use
OMP_NUM_THREADS=1 for comparable timings; prints JSON, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

FIRST_INDEX = 100_001


def _summary(values) -> dict:
    from cdp.evaluate.metrics import summarize

    s = summarize(values)
    return {"mean": s["mean"], "stderr": s["stderr"]}


def _pm(s: dict, fmt: str = ".1f") -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:{fmt}}" + (f" ± {s['stderr']:{fmt}}" if s["stderr"] is not None else "")


def molecules(n: int, first: int = FIRST_INDEX) -> list:
    """[(index, Atoms)] for the first ``n`` closed-shell QM9 molecules from index ``first`` on."""
    from cdp.data.qm9 import load_qm9

    found = load_qm9(range(first, first + 4 * n + 20), allow_reserved=True, strict=False)
    out = [(i, found[i]) for i in sorted(found) if sum(found[i].numbers) % 2 == 0]
    return out[:n]


def eps_mae(weights: np.ndarray, rho_model: np.ndarray, rho_ref: np.ndarray) -> float:
    """100 · Σ w |ρ_model − ρ_ref| / Σ w ρ_ref (both on the same grid and in the same units)."""
    return float(100.0 * (weights @ np.abs(rho_model - rho_ref)) / (weights @ rho_ref))


def run(model_names, n: int, baselines, gradient: str = "auto", log=print) -> dict:
    from pyscf.dft import numint

    import cdp
    from cdp.core.types import CdpError
    from cdp.dft.runs import agreement, check_guesses, check_molecule, density_record, prepare, run_guess

    baselines = [g for g in check_guesses(baselines) if g != "cdp"]
    if "minao" not in baselines:
        baselines = ["minao"] + baselines
    predictors = {}
    skipped = {}
    for name in model_names:
        try:
            predictors[name] = cdp.load_model(name)
        except CdpError as exc:
            skipped[name] = str(exc)
            log(f"skip model {name}: {exc}")
    mols = molecules(n)
    records = []
    for index, atoms in mols:
        mol = check_molecule(atoms, 0, f"qm9 {index}")
        base, setup = prepare(mol)
        rec = {"index": index, "formula": atoms.get_chemical_formula(), "grid_points": int(len(base.grids.weights)),
               "setup_seconds": setup, "runs": {}, "models": {}}
        dm_ref = None
        for g in baselines:
            r, _, mf = run_guess(base, g)
            rec["runs"][g] = r
            if mf.converged and dm_ref is None:
                dm_ref = mf.make_rdm1()
            log(f"qm9 {index} {atoms.get_chemical_formula()}: {g} {r['iterations']} it, "
                f"{r['guess_seconds'] + r['scf_seconds']:.1f} s")
        ao = numint.eval_ao(mol, base.grids.coords)
        rho_ref = numint.eval_rho(mol, ao, dm_ref)
        del ao
        for name, predictor in predictors.items():
            r, made, _ = run_guess(base, "cdp", predictor, gradient)
            m = {"run": r, "density": density_record(made), "inference_seconds": made.info.inference_seconds,
                 "eps_mae": eps_mae(base.grids.weights, made.rho_grid, rho_ref)}
            m["energies_agree"] = agreement([r, *rec["runs"].values()])[0]
            rec["models"][name] = m
            log(f"qm9 {index}: cdp[{name}] {r['iterations']} it, {r['guess_seconds'] + r['scf_seconds']:.1f} s "
                f"(inference {m['inference_seconds']:.1f} s), eps_mae {m['eps_mae']:.2f} %")
        records.append(rec)

    def per_guess(runs):
        return {
            "iterations": _summary([r["iterations"] for r in runs]),
            "scf_seconds": _summary([r["scf_seconds"] for r in runs]),
            "total_seconds": _summary([r["guess_seconds"] + r["scf_seconds"] for r in runs]),
            "total_cpu_seconds": _summary([r["guess_cpu_seconds"] + r["scf_cpu_seconds"] for r in runs]),
        }

    guesses = {g: per_guess([rec["runs"][g] for rec in records]) for g in baselines}
    models = {}
    for name in predictors:
        ms = [rec["models"][name] for rec in records]
        cdp_runs = [m["run"] for m in ms]
        minao = [rec["runs"]["minao"] for rec in records]
        models[name] = {
            **per_guess(cdp_runs),
            "inference_seconds": _summary([m["inference_seconds"] for m in ms]),
            "eps_mae": _summary([m["eps_mae"] for m in ms]),
            "iterations_saved_vs_minao": _summary([b["iterations"] - r["iterations"] for b, r in zip(minao, cdp_runs)]),
            "seconds_saved_vs_minao": _summary([
                (b["guess_seconds"] + b["scf_seconds"]) - (r["guess_seconds"] + r["scf_seconds"])
                for b, r in zip(minao, cdp_runs)
            ]),
            "cpu_seconds_saved_vs_minao": _summary([
                (b["guess_cpu_seconds"] + b["scf_cpu_seconds"]) - (r["guess_cpu_seconds"] + r["scf_cpu_seconds"])
                for b, r in zip(minao, cdp_runs)
            ]),
            "all_agree": all(m["energies_agree"] for m in ms),
            "gradient": ms[0]["density"]["gradient"] if ms else None,
        }
    return {
        "benchmark": "scf_initial_guess",
        "molecules": [rec["index"] for rec in records],
        "baselines": baselines,
        "skipped_models": skipped,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "guesses": guesses,
        "models": models,
        "records": records,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,qm9", help="comma-separated model names or checkpoints")
    ap.add_argument("--molecules", type=int, default=8, help="QM9 molecules from index 100,001 on (default 8)")
    ap.add_argument("--guesses", default="minao,atom,huckel", help="PySCF guesses to compare (minao always)")
    ap.add_argument("--gradient", default="auto", choices=["auto", "autograd", "fd"], help="∇ρ of the model")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.molecules < 1:
        raise SystemExit("--molecules must be at least 1")
    t0 = time.perf_counter()
    res = run([m for m in args.models.split(",") if m], args.molecules, args.guesses.split(","), args.gradient,
              log=lambda msg: print(msg, file=sys.stderr, flush=True))
    res["wall_seconds"] = time.perf_counter() - t0
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        from cdp.core.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    n = len(res["molecules"])
    print(f"\nSCF from each guess on {n} QM9 molecules (indices {res['molecules'][0]}..{res['molecules'][-1]}), "
          f"mean ± standard error")
    print(f"{'guess':<12} {'iterations':>12} {'SCF s':>14} {'guess+SCF s':>14} {'guess+SCF CPU-s':>16}")
    rows = list(res["guesses"].items()) + [("cdp[" + k + "]", v) for k, v in res["models"].items()]
    for g, s in rows:
        print(f"{g:<12} {_pm(s['iterations']):>12} {_pm(s['scf_seconds']):>14} {_pm(s['total_seconds']):>14} "
              f"{_pm(s['total_cpu_seconds']):>16}")
    if res["models"]:
        print("\nsaving vs minao (positive = fewer), per model")
        print(f"{'model':<10} {'eps_mae %':>12} {'iterations':>12} {'s':>14} {'CPU-s':>14} {'inference s':>14} agree")
        for name, s in res["models"].items():
            print(f"{name:<10} {_pm(s['eps_mae'], '.2f'):>12} {_pm(s['iterations_saved_vs_minao']):>12} "
                  f"{_pm(s['seconds_saved_vs_minao']):>14} {_pm(s['cpu_seconds_saved_vs_minao']):>14} "
                  f"{_pm(s['inference_seconds']):>14} {s['all_agree']}")
    for name, why in res["skipped_models"].items():
        print(f"skipped {name}: {why}")


if __name__ == "__main__":
    main()
