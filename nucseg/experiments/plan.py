"""The YAML plan of `bin/reproduce-paper`: which rows, how many runs, what budget, which data.

The paper's rows are a fixed catalogue (ROWS) so a plan names them by key and cannot mistype a
recipe; the paper's numbers live beside them because the report prints them next to ours.
A row names the model it needs (MODELS); rows naming the same model share its training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

METRICS = ("aji", "pq", "dq", "sq", "dice")
METRIC_LABELS = {"aji": "AJI", "pq": "PQ", "dq": "DQ", "sq": "SQ", "dice": "Dice"}
MATTERPORT_ANCHORS = [32, 64, 128, 256, 512]


@dataclass(frozen=True)
class Row:
    """One line of the paper's Table 1 or Figure 5: a model, and how it predicts."""
    key: str
    label: str
    section: str                    # "table1" or "figure5"
    model: str | None               # a MODELS key; None: nucseg cannot train it (`missing`)
    ensemble: bool = False
    tta: bool = False
    paper: tuple | None = None      # Table 1, % (AJI, PQ, DQ, SQ, Dice), mean of 5 runs
    missing: str = ""


ROWS = {r.key: r for r in [
    Row("standard", "Standard Mask R-CNN", "table1", "standard",
        paper=(60.97, 60.49, 82.20, 73.47, 77.87)),
    Row("plus", "Mask R-CNN+", "table1", "plus", paper=(62.29, 60.67, 81.14, 74.69, 79.67)),
    Row("ensemble", "+ Ensemble", "table1", "plus", ensemble=True,
        paper=(63.11, 61.73, 80.93, 76.22, 80.37)),
    Row("tta", "+ TTA", "table1", "plus", tta=True, paper=(62.40, 60.88, 81.34, 74.76, 79.57)),
    Row("pannuke", "+ PanNuke", "table1", "pannuke", paper=(63.08, 61.77, 82.01, 75.26, 79.96)),
    Row("pannuke_ensemble", "+ PanNuke + Ensemble", "table1", "pannuke", ensemble=True,
        paper=(64.02, 62.41, 81.79, 76.25, 80.76)),
    Row("pannuke_tta", "+ PanNuke + TTA", "table1", "pannuke", tta=True,
        paper=(63.49, 63.05, 83.16, 75.76, 80.15)),
    Row("ensemble_tta", "+ Ensemble + TTA", "table1", "plus", ensemble=True, tta=True,
        paper=(63.38, 63.44, 83.01, 76.37, 80.52)),
    Row("ensemble_tta_pannuke", "+ Ensemble + TTA + PanNuke", "table1", "pannuke",
        ensemble=True, tta=True, paper=(64.43, 64.60, 84.53, 76.37, 80.91)),
    Row("input_rgb", "RGB only", "figure5", "rgb"),
    Row("input_rgb_h", "RGB + hematoxylin", "figure5", "rgb_h"),
    Row("input_rgb_d", "RGB + distance", "figure5", "rgb_d"),
    Row("input_both", "RGB + distance + hematoxylin (= Mask R-CNN+)", "figure5", "plus"),
]}
PAPER_BEST = "ensemble_tta_pannuke"
PAPER_P = {"aji": "0.002", "pq": "0.001", "dq": "0.008", "sq": "< 0.001", "dice": "< 0.001"}


@dataclass(frozen=True)
class Model:
    """What one training run gets beyond the plan's common settings."""
    overrides: dict = field(default_factory=dict)   # config values (written into its YAML)
    train: tuple = ()                               # extra `nucseg train` options
    schedule: str = "paper"                         # which budget epochs apply
    init: str = "coco"                              # coco (when given) or pannuke


# Our reading of "standard Mask R-CNN": Matterport's model as shipped (RGB input, its anchor
# scales, its heads/4+/all SGD schedule at its learning rate), on the same crops and data.
MODELS = {
    "standard": Model({"IMAGE_CHANNEL_COUNT": 3, "RPN_ANCHOR_SCALES": MATTERPORT_ANCHORS},
                      ("--schedule", "matterport", "--learning-rate", "0.001"), "matterport"),
    "plus": Model(),
    "rgb": Model({"IMAGE_CHANNEL_COUNT": 3}),
    "rgb_h": Model(train=("--inputs", "rgb+h")),              # 4 channels (Figure 5)
    "rgb_d": Model(train=("--inputs", "rgb+distance")),
    "pannuke": Model(init="pannuke"),
}

TOP_KEYS = {"runs", "seeds", "configurations", "budget", "data", "model", "models", "options",
            "ensemble_folds", "train_distance", "test_distance", "seen_organs",
            "require_coco", "compare"}
BUDGET_KEYS = {"epochs", "standard_epochs", "steps_per_epoch", "backbone", "pannuke_epochs",
               "unet_epochs"}
DATA_PATHS = {"train_images", "train_labels", "test_images", "test_labels", "metadata",
              "train_metadata", "test_metadata", "pannuke_weights", "coco_weights",
              "distance_model", "images", "labels"}
DATA_KEYS = DATA_PATHS | {"pannuke", "split"}
# what finished runs depend on: a resumed OUTDIR must have been started with the same values
FINGERPRINT = ("budget", "data", "model", "models", "options", "ensemble_folds",
               "train_distance", "test_distance", "require_coco")


class Plan:
    """A validated plan; paths are resolved against the plan file's folder."""

    def __init__(self, raw: dict, where: Path):
        self.raw, self.where = raw, where
        unknown(raw, TOP_KEYS, "plan")
        seeds = raw.get("seeds")
        if seeds is None:
            runs = raw.get("runs", 5)
            if not isinstance(runs, int) or runs < 1:
                raise ValueError(f"runs must be a whole number >= 1, got {runs!r}")
            seeds = list(range(runs))
        if not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) < len(seeds):
            raise ValueError(f"seeds must be distinct whole numbers, got {seeds!r}")
        self.seeds = list(seeds)
        wanted = list(raw.get("configurations") or ROWS)
        bad = [k for k in wanted if k not in ROWS]
        if bad:
            raise ValueError(f"unknown configuration(s) {', '.join(map(str, bad))}; "
                             f"choose from {', '.join(ROWS)}")
        self.rows = [k for k in ROWS if k in wanted]        # the paper's order
        budget = dict(raw.get("budget") or {})
        unknown(budget, BUDGET_KEYS, "budget")
        self.epochs = epochs(budget.get("epochs", [5, 35, 5, 5]), 4, "budget.epochs")
        total = sum(self.epochs)
        self.standard_epochs = epochs(budget.get("standard_epochs",
                                                 [total // 5, 2 * total // 5,
                                                  total - total // 5 - 2 * total // 5]),
                                      3, "budget.standard_epochs")
        self.pannuke_epochs = epochs(budget.get("pannuke_epochs", self.epochs), 4,
                                     "budget.pannuke_epochs")
        self.steps = budget.get("steps_per_epoch")
        self.backbone = budget.get("backbone")
        self.unet_epochs = int(budget.get("unet_epochs", 80))
        data = dict(raw.get("data") or {})
        unknown(data, DATA_KEYS, "data")
        self.data = {k: self.path(v) for k, v in data.items() if k in DATA_PATHS and v}
        pannuke = data.get("pannuke") or []
        self.pannuke = [self.path(p) for p in ([pannuke] if isinstance(pannuke, str)
                                               else pannuke)]
        self.split = data.get("split")
        model = dict(raw.get("model") or {})
        unknown(model, {"config", "overrides"}, "model")
        config = str(model.get("config", "paper"))
        self.config = config if config in ("paper", "ren", "matterport") else self.path(config)
        self.overrides = dict(model.get("overrides") or {})
        self.models = dict(MODELS)
        for key, changes in (raw.get("models") or {}).items():
            if key not in MODELS:
                raise ValueError(f"models: unknown model {key!r} (one of {', '.join(MODELS)})")
            unknown(changes, {"overrides", "train", "schedule"}, f"models.{key}")
            base = MODELS[key]
            self.models[key] = Model({**base.overrides, **(changes.get("overrides") or {})},
                                     tuple(str(a) for a in changes.get("train", base.train)),
                                     changes.get("schedule", base.schedule), base.init)
        options = dict(raw.get("options") or {})
        unknown(options, {"train", "predict", "unet"}, "options")
        self.options = {k: [str(a) for a in options.get(k) or []]
                        for k in ("train", "predict", "unet")}
        self.ensemble_folds = str(raw.get("ensemble_folds", "organ"))
        self.train_distance = choice(raw, "train_distance", ("labels", "unet"))
        self.test_distance = choice(raw, "test_distance", ("unet", "labels"))
        seen = raw.get("seen_organs")
        self.seen_organs = [s.strip().lower() for s in (seen.split(",") if isinstance(seen, str)
                                                        else seen)] if seen else None
        self.require_coco = bool(raw.get("require_coco", False))
        compare = raw.get("compare") or ["standard", "best"]
        if len(compare) != 2 or compare[0] not in ROWS or compare[1] not in (*ROWS, "best"):
            raise ValueError(f"compare takes [A, B]: two configuration keys (B may be 'best'), "
                             f"got {compare!r}")
        self.compare = tuple(compare)

    def path(self, value) -> Path:
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else self.where / path

    def fingerprint(self) -> dict:
        return {k: self.raw.get(k) for k in FINGERPRINT}


def load_plan(path) -> Plan:
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: plan not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the plan ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a plan is a YAML mapping (see examples/paper_plan.yaml)")
    try:
        return Plan(raw, path.resolve().parent)
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: malformed plan ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def unknown(section, allowed, where: str) -> None:
    if not isinstance(section, dict):
        raise ValueError(f"{where} must be a mapping, got {section!r}")
    extra = sorted(set(section) - set(allowed))
    if extra:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(str, extra))} "
                         f"(allowed: {', '.join(sorted(allowed))})")


def epochs(value, stages: int, where: str) -> list[int]:
    values = [int(v) for v in (value.split(",") if isinstance(value, str) else value)]
    if len(values) != stages or min(values) < 0 or sum(values) < 1:
        raise ValueError(f"{where} takes {stages} epoch counts >= 0 (not all 0), got {value!r}")
    return values


def choice(raw: dict, key: str, allowed: tuple) -> str:
    value = str(raw.get(key, allowed[0]))
    if value not in allowed:
        raise ValueError(f"{key} is one of {', '.join(allowed)}, got {value!r}")
    return value
