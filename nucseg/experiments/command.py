"""`bin/reproduce-paper PLAN.yaml -o OUTDIR [--resume]`: the whole protocol, then the report.

Tables are rewritten after every completed seed, so a long run interrupted on day two still
has the tables of the runs it finished; `--resume` continues it, skipping finished steps.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nucseg.experiments.plan import ROWS, load_plan
from nucseg.experiments.protocol import Protocol
from nucseg.experiments.recipe import Recipe, StepFailed, quote
from nucseg.experiments import report

STATE = "plan.yaml"
OUTPUTS = ("table1.md", "table2.md", "paper_comparison.md", "wilcoxon.md", "figure6.png",
           "results.json", "recipe.sh")


def reproduce(plan_path, outdir, resume: bool = False, dry_run: bool = False,
              echo=None) -> dict:
    """Run (or continue) the plan's protocol in `outdir`; returns the results summary."""
    from nucseg.outdir import claim

    plan = load_plan(plan_path)
    outdir = Path(outdir).resolve()
    check_state(plan, outdir, resume)
    if dry_run:
        protocol = start(plan, plan_path, outdir, Recipe(outdir, dry_run=True, echo=echo),
                         "--dry-run")
        protocol.run()
        a, b = plan.compare
        protocol.recipe.comment(f"then, per seed and on per-image means over the seeds: nucseg "
                                f"compare <{a} scores> <{b} scores>"
                                + (" (best: the highest mean AJI)" if b == "best" else ""))
        return {"exit_status": 0}
    with claim(outdir):
        write_state(plan, outdir)
        protocol = start(plan, plan_path, outdir, Recipe(outdir, echo=echo),
                         "--resume" if resume else "")
        done: list[int] = []

        def after_seed():
            done.append(plan.seeds[len(done)])
            if len(done) < len(plan.seeds):
                write_report(protocol, done, final=False)

        protocol.run(after_seed)
        return write_report(protocol, plan.seeds, final=True)


def start(plan, plan_path, outdir: Path, recipe: Recipe, flag: str) -> Protocol:
    recipe.comment(f"--- bin/reproduce-paper {quote(Path(plan_path).resolve())} -o "
                   f"{quote(outdir)} {flag}   ({time.strftime('%Y-%m-%d %H:%M')})")
    protocol = Protocol(plan, outdir, recipe)
    protocol.resolve_data()
    for key in plan.rows:
        if protocol.status[key]:
            recipe.comment(f"{ROWS[key].label}: {protocol.status[key]}")
    return protocol


def check_state(plan, outdir: Path, resume: bool) -> None:
    """A reused OUTDIR must come from the same budget and data, or its runs would lie."""
    import yaml

    state = outdir / STATE
    if state.is_file():
        if not resume:
            raise ValueError(f"{outdir} already holds a reproduction ({STATE}): continue it "
                             "with --resume, or choose a new output directory")
        saved = (yaml.safe_load(state.read_text(encoding="utf-8")) or {}).get("fingerprint", {})
        now = plan.fingerprint()
        changed = [k for k in now if saved.get(k) != now[k]]
        if changed:
            raise ValueError(f"the plan's {', '.join(changed)} differ from those {outdir} was "
                             f"started with ({state}); finished runs would not match the "
                             "plan: use a new output directory")
    elif outdir.is_dir() and any(p.name != ".nucseg.lock" for p in outdir.iterdir()):
        raise ValueError(f"{outdir} is not empty and holds no reproduction ({STATE}): choose "
                         "a new output directory")


def write_state(plan, outdir: Path) -> None:
    import yaml

    from nucseg.experiments.recipe import atomic_text

    state = outdir / STATE
    if not state.is_file():
        atomic_text(state, yaml.safe_dump({"plan_file": str(plan.where), "fingerprint":
                                           plan.fingerprint(), "plan": plan.raw},
                                          sort_keys=False))


def write_report(protocol, seeds, final: bool) -> dict:
    """The tables, results.json and the figure for the runs of `seeds`."""
    from nucseg.experiments.recipe import atomic_text
    from nucseg.io import write_record

    out, plan = protocol.out, protocol.plan
    rows = report.collect(protocol, seeds)
    comparison, why = None, "waiting for the last run" if not final else ""
    if final:
        comparison, why = compare(protocol, rows)
    texts = {"table1.md": report.table1(protocol, rows),
             "table2.md": report.table2(protocol, rows),
             "paper_comparison.md": report.paper_table(protocol, rows),
             "wilcoxon.md": report.wilcoxon_table(protocol, rows, comparison, why)}
    for name, text in texts.items():
        atomic_text(out / name, text)
    figure = "figure6.png"
    try:
        from nucseg.experiments.figure import plot_runs

        plot_runs(rows, out / figure, f"Per-run scores (%), {len(seeds)} run(s) per "
                                      f"configuration; bar: mean over runs")
    except ImportError:
        figure = "not written: matplotlib is not installed (pip install 'nucseg[experiments]')"
    except ValueError as exc:
        figure = f"not written: {exc}"
    failed = [k for k, r in rows.items() if r["status"].startswith(("failed", "incomplete"))]
    summary = {"plan": str(plan.where), "outdir": str(out), "seeds": list(seeds),
               "complete": final, "budget": report.budget_lines(protocol),
               "seen_organs": protocol.seen, "rows": rows,
               "comparison": comparison or {"not_run": why}, "figure": figure,
               "steps": {"ran": len(protocol.recipe.ran), "skipped": protocol.recipe.skipped},
               "exit_status": 1 if failed or why.startswith("failed") else 0}
    write_record(out / "results.json", summary)
    return summary


def compare(protocol, rows: dict):
    """Best (or the plan's B) against the plan's A, via `nucseg compare`."""
    a, b = protocol.plan.compare
    chosen = b == "best"
    if chosen:
        b = report.best_row(rows, a)
    if rows.get(a, {}).get("status") != "run":
        state = rows[a]["status"] if a in rows else "not in the plan"
        return None, f"A = {a} has no scores ({state})"
    if b is None or rows.get(b, {}).get("status") != "run":
        return None, f"B = {b or 'best'} has no scores"
    try:
        files = protocol.compare(a, b)
    except StepFailed as exc:
        return None, f"failed: {exc}"
    return {"a": a, "b": b, "chosen": chosen, "results": report.read_comparison(files)}, ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="reproduce-paper", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reproduce the Mask R-CNN+ paper's experiments (Table 1, Table 2, "
                    "Wilcoxon tests, Figures 5 and 6) with nucseg commands, from a YAML plan.",
        epilog="Example:\n  bin/reproduce-paper examples/paper_plan.yaml -o repro/\n"
               "  bin/reproduce-paper examples/paper_plan.yaml -o repro/ --resume\n"
               "Writes OUTDIR/" + ", ".join(OUTPUTS) + " (docs/reproduce.md).")
    parser.add_argument("plan", help="the plan (YAML; see examples/paper_plan.yaml)")
    parser.add_argument("-o", "--outdir", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue a reproduction in OUTDIR: finished steps are skipped")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the nucseg commands of the plan without running them")
    args = parser.parse_args(argv)
    from nucseg.cli import stop_signals_interrupt
    from nucseg.cli.native_logs import filter_native_logs
    from nucseg.io import InputError

    stop_signals_interrupt()
    filter_native_logs()
    try:
        summary = reproduce(args.plan, args.outdir, args.resume, args.dry_run)
    except (ValueError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun with --resume to continue", file=sys.stderr)
        return 130
    if not args.dry_run:
        print(f"wrote {', '.join(OUTPUTS)} to {args.outdir} "
              f"({summary['steps']['ran']} command(s) run, {summary['steps']['skipped']} "
              "done before)")
    return summary["exit_status"]
