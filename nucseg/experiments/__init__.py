"""Reproducing published experiments with nucseg commands (`bin/reproduce-paper`).

A YAML plan names the Mask R-CNN+ paper's rows, the runs, the budget and the data; the protocol
runs only nucseg commands, in this process (so tests can swap in a tiny backbone), and logs
each as its shell line in OUTDIR/recipe.sh. See docs/reproduce.md.
"""
from nucseg.experiments.plan import ROWS, load_plan

__all__ = ["ROWS", "load_plan", "reproduce"]


def reproduce(plan_path, outdir, resume: bool = False, dry_run: bool = False, echo=None):
    """Run (or continue) a plan in `outdir` (nucseg.experiments.command.reproduce)."""
    from nucseg.experiments.command import reproduce as run

    return run(plan_path, outdir, resume, dry_run, echo)
