"""The Mask R-CNN+ paper's protocol as nucseg commands: distance maps, PanNuke, training,
prediction, scoring, comparison.

Each row of the plan needs a trained model (one run per seed) and a way to predict with it;
the model of a row is trained once and shared (the TTA rows reuse the single models, the
ensemble rows the fold models, Figure 5's "both" is Mask R-CNN+), and so are predictions and
scores. A row that cannot run says why instead of vanishing from the table.
"""
from __future__ import annotations

import json
from pathlib import Path

from nucseg.experiments.plan import ROWS, Plan, Row
from nucseg.experiments.recipe import Recipe, StepFailed, quote


class Protocol:
    def __init__(self, plan: Plan, outdir, recipe: Recipe):
        self.plan, self.out, self.recipe = plan, Path(outdir).resolve(), recipe
        self.status: dict[str, str] = {}            # row -> "" (runs) or why it does not
        self.failed: dict[str, str] = {}            # training unit / prediction -> failure
        self.scores: dict[tuple[str, int], Path] = {}
        self.pannuke_init = None
        self.test_distance = self.train_distance = None

    # ------------------------------------------------------------------ set-up
    def resolve_data(self) -> None:
        plan, data = self.plan, dict(self.plan.data)
        linked, stems = {}, {}
        if plan.split:
            linked, stems = link_split(plan, self.out / "data", self.recipe)
            data.update(linked)
        for key in ("train_images", "train_labels", "test_images", "test_labels"):
            if key not in data:
                raise ValueError(f"the plan needs data.{key} (or data.images, data.labels, "
                                 "data.metadata and data.split)")
        for key, path in data.items():      # split folders are not made in a dry run
            if key not in ("images", "labels", *linked) and not Path(path).exists():
                raise ValueError(f"data.{key}: {path} not found")
        self.data = {k: Path(v).resolve() for k, v in data.items()}
        self.train_meta = self.data.get("train_metadata") or self.data.get("metadata")
        self.test_meta = self.data.get("test_metadata") or self.data.get("metadata")
        from nucseg.io import expand_inputs

        self.stems = {part: stems.get(part) or [p.stem for p in expand_inputs(
            [self.data[f"{part}_images"]])] for part in ("train", "test")}
        self.test_stems = self.stems["test"]
        self.seen = self.seen_organs()
        for row in (ROWS[k] for k in plan.rows):
            self.status[row.key] = self.why_not(row)

    def seen_organs(self) -> list[str] | None:
        """The train organs that the test set has (the paper's "seen"), or the plan's list."""
        from nucseg.scoring import organ_table

        if not self.test_meta:
            return None
        test = organ_table(self.test_meta)
        test_organs = {test.get(s) for s in self.test_stems} - {None}
        if self.plan.seen_organs:
            absent = sorted(set(self.plan.seen_organs) - test_organs)
            if absent:
                raise ValueError(f"seen_organs: no test image of {', '.join(absent)}")
            return sorted(self.plan.seen_organs)
        if not self.train_meta:
            return None
        train = organ_table(self.train_meta)
        names = self.stems["train"]
        return sorted({train[n] for n in names if n in train} & test_organs) or None

    def why_not(self, row: Row) -> str:
        if row.model is None:
            return "not run: " + row.missing
        model, data = self.plan.models[row.model], self.data
        if model.init == "pannuke" and "pannuke_weights" not in data:
            if not self.plan.pannuke:
                return ("not run: no PanNuke data in the plan (data.pannuke: PanNuke fold "
                        "folders, or data.pannuke_weights)")
            absent = [str(p) for p in self.plan.pannuke if not p.is_dir()]
            if absent:
                return f"not run: PanNuke folder {', '.join(absent)} not found"
        if self.plan.require_coco and "coco_weights" not in data:
            return "not run: no COCO weights (data.coco_weights) and the plan sets require_coco"
        if row.ensemble and self.plan.ensemble_folds == "organ" and not self.train_meta:
            return ("not run: organ folds need the training images' organs (data.metadata or "
                    "data.train_metadata)")
        return ""

    def config(self, key: str) -> tuple[Path, int]:
        """configs/<model>.yaml (written into the recipe) and the model's channel count."""
        import yaml

        from nucseg.mrcnn.config import PRESETS

        plan = self.plan
        if isinstance(plan.config, Path):
            base = yaml.safe_load(plan.config.read_text(encoding="utf-8")) or {}
        else:
            base = {"preset": plan.config}
        values = {**base, **plan.overrides, **plan.models[key].overrides}
        preset = PRESETS.get(values.get("preset"), ({}, {}))[0]
        channels = int(values.get("IMAGE_CHANNEL_COUNT", preset.get("IMAGE_CHANNEL_COUNT", 3)))
        path = self.out / "configs" / f"{key}.yaml"
        self.recipe.write_file(path, yaml.safe_dump(values, sort_keys=False))
        return path, channels

    # ------------------------------------------------------------------ shared inputs
    def prepare_distance(self) -> None:
        """Test-time distance maps (U-Net, as the paper; or ground truth, an oracle) and, with
        train_distance: unet, the U-Net's maps of the training tiles."""
        step, d, out = self.recipe.step, self.data, self.out / "distance"
        if self.plan.test_distance == "labels":
            self.test_distance = out / "test_from_labels"
            step(["distance", "labels", d["test_labels"], "-o", self.test_distance],
                 self.test_distance, record_done(self.test_distance, "distance_labels"))
        else:
            self.test_distance = self.distance_maps(d["test_images"], out / "test_unet")
        if self.plan.train_distance == "unet":
            self.train_distance = self.distance_maps(d["train_images"], out / "train_unet")

    def unet(self) -> Path:
        if "distance_model" in self.data:
            return self.data["distance_model"]
        unet = self.out / "unet"
        args = ["distance", "train", "--images", self.data["train_images"], "--labels",
                self.data["train_labels"], "-o", unet, "--epochs", self.plan.unet_epochs,
                "--seed", 0, *self.plan.options["unet"]]
        self.recipe.step(args, unet, record_done(unet, "distance_train"), [*args, "--resume"])
        return unet

    def distance_maps(self, images, outdir: Path) -> Path:
        self.recipe.step(["distance", "predict", images, "-m", self.unet(), "-o", outdir],
                         outdir, record_done(outdir, "distance_predict"))
        return outdir

    def prepare_pannuke(self) -> None:
        """PanNuke folds imported and one model pretrained on them (shared by every run)."""
        if "pannuke_weights" in self.data:
            self.pannuke_init = self.data["pannuke_weights"]
            return
        data, model = self.out / "pannuke" / "data", self.out / "pannuke" / "model"
        for number, fold in enumerate(self.plan.pannuke, start=1):
            record = self.out / "pannuke" / f"import_{number}.step.yaml"
            self.recipe.step(["import", "pannuke", fold.resolve(), "-o", data, "--no-progress"],
                             data, lambda: (data / "classes.csv").is_file(), record=record,
                             shared=True)
        args = self.train_args("pannuke", data / "images", data / "labels", model, 0,
                               self.plan.pannuke_epochs, self.data.get("coco_weights"),
                               own_distance=False)
        args += ["--classes", data / "classes.csv"]
        self.recipe.step(args, model, lambda: run_finished(model),
                         ["train", "-o", model, "--resume", "--no-progress"])
        self.pannuke_init = model

    # ------------------------------------------------------------------ per run
    def train_args(self, key, images, labels, run, seed, epochs, init,
                   own_distance: bool = True) -> list:
        """`nucseg train` for model `key`; `own_distance` False: distance maps from the labels
        (PanNuke pretraining: the U-Net never saw those images)."""
        plan, model = self.plan, self.plan.models[key]
        config, channels = self.config(key)
        args = ["train", "--images", images, "--labels", labels, "-o", run, "--config", config,
                "--epochs", ",".join(map(str, epochs))]
        if plan.backbone:
            args += ["--backbone", plan.backbone]
        if plan.steps:
            args += ["--steps-per-epoch", plan.steps]
        if init:
            args += ["--init", init]
        if channels == 5 and self.train_distance and own_distance:
            args += ["--distance", self.train_distance]
        return [*args, *model.train, *plan.options["train"], "--seed", seed, "--no-progress"]

    def train(self, row: Row, seed: int) -> Path:
        unit = row.model + ("_folds" if row.ensemble else "")
        if unit in self.failed:
            raise StepFailed(self.failed[unit])
        model, plan = self.plan.models[row.model], self.plan
        run = self.out / "models" / unit / f"seed{seed}"
        init = self.pannuke_init if model.init == "pannuke" else self.data.get("coco_weights")
        epochs = plan.standard_epochs if model.schedule == "matterport" else plan.epochs
        args = self.train_args(row.model, self.data["train_images"], self.data["train_labels"],
                               run, seed, epochs, init)
        if row.ensemble:
            args += ["--folds", plan.ensemble_folds]
            if plan.ensemble_folds == "organ":
                args += ["--metadata", self.train_meta]
        done = (lambda: (run / "folds.yaml").is_file()) if row.ensemble \
            else (lambda: run_finished(run))
        try:
            self.recipe.step(args, run, done, ["train", "-o", run, "--resume", "--no-progress"])
        except StepFailed as exc:
            self.failed[unit] = str(exc)
            raise
        return run

    def prediction_key(self, row: Row) -> str:
        return row.model + ("_folds" if row.ensemble else "") + ("_tta" if row.tta else "")

    def predict_and_score(self, row: Row, seed: int) -> None:
        key = self.prediction_key(row)
        if key in self.failed:
            raise StepFailed(self.failed[key])
        run = self.train(row, seed)
        pred = self.out / "predictions" / key / f"seed{seed}"
        score = self.out / "scores" / key / f"seed{seed}.json"
        args = ["predict", self.data["test_images"], "-o", pred,
                "--ensemble" if row.ensemble else "-m", run, "--seed", seed]
        if row.tta:
            args.append("--tta")
        if self.config(row.model)[1] == 5:
            args += ["--distance-dir", self.test_distance]
        args += self.plan.options["predict"]
        scoring = ["score", "--gt", self.data["test_labels"], "--pred", pred, "--format", "json",
                   "-o", score]
        if self.test_meta:
            scoring += ["--metadata", self.test_meta]
            if self.seen:
                scoring += ["--seen-organs", ",".join(self.seen)]
        try:
            predicted = self.recipe.step(args, pred, lambda: all(
                (pred / f"{s}_record.yaml").is_file() for s in self.test_stems),
                [*args, "--resume"])
            self.recipe.step(scoring, score, lambda: score.is_file() and score.with_name(
                f"{score.stem}_record.yaml").is_file(), force=predicted)
        except StepFailed as exc:
            self.failed[key] = str(exc)
            raise
        self.scores[(row.key, seed)] = score

    def run(self, after_seed=None) -> None:
        """Every runnable row for every seed, seed by seed (tables fill up run by run)."""
        rows = [ROWS[k] for k in self.plan.rows if not self.status[ROWS[k].key]]
        self.prepare(rows)
        for seed in self.plan.seeds:
            self.recipe.comment(f"--- run with seed {seed}")
            for row in rows:
                if self.status[row.key]:
                    continue
                try:
                    self.predict_and_score(row, seed)
                except StepFailed as exc:
                    self.status[row.key] = f"failed: {exc}"
            if after_seed:
                after_seed()

    def prepare(self, rows) -> None:
        needs = {
            "distance": [r for r in rows if self.config(r.model)[1] == 5],
            "pannuke": [r for r in rows if self.plan.models[r.model].init == "pannuke"]}
        for what, prepare in (("distance", self.prepare_distance),
                              ("pannuke", self.prepare_pannuke)):
            if not needs[what]:
                continue
            try:
                prepare()
            except StepFailed as exc:
                for row in needs[what]:
                    self.status[row.key] = f"failed: {exc}"

    # ------------------------------------------------------------------ Wilcoxon
    def compare(self, a: str, b: str) -> dict:
        """`nucseg compare` of A and B: per seed, and on per-image means over all seeds."""
        seeds = self.plan.seeds
        folder = self.out / "compare" / f"{a}_vs_{b}"
        results = {"a": a, "b": b, "per_seed": {}}
        for seed in seeds:
            out = folder / f"seed{seed}.json"
            self.compare_step(self.scores[(a, seed)], self.scores[(b, seed)], out)
            results["per_seed"][seed] = out
        tag = "_".join(map(str, seeds))
        means = []
        for key in (a, b):
            path = folder / f"{key}_mean_over_seeds_{tag}.json"
            self.recipe.comment(f"reproduce-paper writes {quote(path)}: per image, the mean "
                                f"over seeds {', '.join(map(str, seeds))} of the scores above")
            write_run_means([self.scores[(key, s)] for s in seeds], path)
            means.append(path)
        out = folder / f"mean_over_seeds_{tag}.json"
        self.compare_step(*means, out)
        results["mean_over_seeds"] = out
        return results

    def compare_step(self, a_file, b_file, out: Path) -> None:
        rescored = any(args[0] == "score" for args in self.recipe.ran)
        self.recipe.step(["compare", a_file, b_file, "--format", "json", "-o", out], out,
                         lambda: out.is_file(), force=rescored)


def run_finished(run: Path) -> bool:
    import yaml

    record = run / "run.yaml"
    return record.is_file() and (yaml.safe_load(record.read_text()) or {}).get(
        "status") == "finished"


def record_done(folder: Path, name: str):
    return lambda: (folder / f"{name}_record.yaml").is_file()


def write_run_means(score_files, path: Path) -> None:
    """A score JSON whose per-image values are means over runs (what `compare` pairs)."""
    from nucseg.experiments.recipe import atomic_text
    from nucseg.metrics import METRIC_NAMES

    tables = [{r["image"]: r for r in json.loads(Path(f).read_text())["per_image"]}
              for f in score_files]
    rows = []
    for image in sorted(tables[0]):
        row = {"image": image}
        for metric in METRIC_NAMES:
            values = [t[image].get(metric) for t in tables if t[image].get(metric) is not None]
            row[metric] = sum(values) / len(values) if values else None
        rows.append(row)
    atomic_text(path, json.dumps({"per_image": rows, "mean_of": [str(f) for f in score_files]},
                                 indent=1) + "\n")


def link_split(plan: Plan, root: Path, recipe: Recipe) -> tuple[dict, dict]:
    """data.images/labels split by a metadata column (e.g. MoNuSeg's split_hovernet_kumar)
    into symlinked train/test folders, so every nucseg command sees one folder per set.
    Returns the folders (data keys) and the image stems of each part."""
    import csv
    import os

    from nucseg.io import expand_inputs
    from nucseg.scoring import image_name

    split, data = plan.split, plan.data
    if not isinstance(split, dict) or not {"column", "train", "test"} <= set(split):
        raise ValueError("data.split takes column, train and test (values of that column)")
    for key in ("images", "labels", "metadata"):
        if key not in data:
            raise ValueError(f"data.split needs data.{key}")
    images = {p.stem: p for p in expand_inputs([data["images"]])}
    labels = {image_name(p): p for p in expand_inputs([data["labels"]])}
    with open(data["metadata"], newline="", encoding="utf-8-sig") as fh:
        table = list(csv.DictReader(fh))
    found, stems = {}, {}
    for part in ("train", "test"):
        wanted = {str(v) for v in (split[part] if isinstance(split[part], list)
                                   else [split[part]])}
        ids = [r["id"] for r in table if r.get(split["column"]) in wanted]
        if not ids:
            raise ValueError(f"data.split: no row has {split['column']} in {sorted(wanted)}")
        for kind, files in (("images", images), ("labels", labels)):
            folder = root / part / kind
            missing = [name for name in ids if name not in files]
            if missing:
                raise ValueError(f"data.split: no {kind[:-1]} file for {missing[0]}")
            if not recipe.dry_run:      # a dry run writes nothing (a real run may follow)
                folder.mkdir(parents=True, exist_ok=True)
                for name in ids:
                    link = folder / files[name].name
                    if not link.exists():
                        os.symlink(files[name].resolve(), link)
            found[f"{part}_{kind}"] = folder
        stems[part] = sorted(images[name].stem for name in ids)
        recipe.comment(f"{len(ids)} {part} tiles ({split['column']} in {', '.join(sorted(wanted))})"
                       f" linked into {quote(root / part)}/images and /labels")
    return found, stems
