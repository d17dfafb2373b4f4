"""Fold ensembles for `nucseg train --folds`: one model per fold, each in run_dir/<fold>/,
trained without its held-out images (nucseg.data.folds makes the folds), sequentially or as
Dask tasks; `resume_folds` finishes an interrupted ensemble from its written plan.
"""
from __future__ import annotations

from pathlib import Path

import nucseg.train as training   # train_run looked up at call time (tests replace it)
from nucseg.io import InputError

FOLD_PLAN = "folds_plan.yaml"


def train_folds(config, dataset, run_dir, options: training.TrainOptions, folds, resume=False,
                log=print, extend=None, dask=None) -> list[dict]:
    """One model per fold, each in run_dir/<fold name>/, trained without its held-out images.

    The plan (config, options, data, folds) is written first, so `resume_folds` can finish
    folds that an interruption left unstarted. With `dask` (a
    nucseg.prediction.distributed.DaskWork) the folds train as parallel tasks, one per worker.
    """
    from nucseg.io import make_record, write_record

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    training._write_yaml(run_dir / FOLD_PLAN, {
        "config": config.to_dict(), "options": options.to_dict(),
        "dataset": dataset.describe(),
        "folds": [{"name": n, "train": list(t), "held_out": list(h)} for n, t, h in folds]})
    calls = [(config.to_dict(), dataset.subset(train_names).describe(), str(run_dir / name),
              options.to_dict(), resume and (run_dir / name / "config.yaml").is_file(), extend)
             for name, train_names, _ in folds]
    if dask is None:
        results = []
        for call, (fold_name, train_names, held_out) in zip(calls, folds):
            log(f"fold {fold_name}: {len(train_names)} training images, {len(held_out)} "
                "held out")
            results.append(train_fold(*call, log=log))
    else:
        log(f"{len(folds)} folds as Dask tasks on {dask.workers()} worker(s)")
        results = dask.map(train_fold, calls, [str(run_dir / name) for name, _, _ in folds])
    for summary, (fold_name, _, held_out) in zip(results, folds):
        summary.update(fold=fold_name, held_out=held_out)
    write_record(run_dir / "folds.yaml", make_record("train --folds", options=options.to_dict(),
                                                     folds=results))
    return results


def train_fold(config: dict, dataset: dict, run_dir: str, options: dict, resume: bool,
               extend=None, log=None) -> dict:
    """One fold model from plain values (config dict, data set description), so that a Dask
    worker can run it: train_run on the rebuilt objects."""
    from nucseg.data.dataset import Dataset
    from nucseg.mrcnn.config import Config

    return training.train_run(Config(**config), Dataset.from_description(dataset), Path(run_dir),
                     training.TrainOptions(**options), resume=resume, log=log or (lambda msg: None),
                     extend=extend)


def resume_folds(run_dir, options: training.TrainOptions, log=print, extend=None,
                 dask=None) -> list[dict]:
    """Continue an ensemble run: every fold, including those not started before the stop."""
    from nucseg.data.dataset import Dataset
    from nucseg.mrcnn.config import Config

    run_dir = Path(run_dir)
    plan = training._read_yaml(run_dir / FOLD_PLAN) if (run_dir / FOLD_PLAN).is_file() else None
    if plan is None:
        raise ValueError(f"{run_dir}: nothing to resume (neither config.yaml of a run nor "
                         f"{FOLD_PLAN} of a fold ensemble)")
    try:
        saved = {**plan["options"], "progress": options.progress}
        folds = [(f["name"], f["train"], f["held_out"]) for f in plan["folds"]]
        config, dataset = Config(**plan["config"]), Dataset.from_description(plan["dataset"])
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise InputError(run_dir / FOLD_PLAN, f"damaged run file: unusable settings "
                                              f"({exc})") from None
    saved.update(training._schedule_changes(saved, extend))
    return train_folds(config, dataset, run_dir,
                       training._saved_settings(run_dir / FOLD_PLAN, training.TrainOptions,
                                                saved),
                       folds, resume=True, log=log, extend=extend, dask=dask)
