"""Model configuration with Matterport's attribute names, defaults and derived values.

Matterport users configure by subclassing or attribute overrides; both work here:
`Config(NUM_CLASSES=2)`, `class MyConfig(Config): NUM_CLASSES = 2`, or
`Config.preset("paper", inference=True)`. Everything is validated at construction, so a bad
value fails with one clear ValueError instead of a shape error deep inside the graph.
Derived values (BATCH_SIZE, IMAGE_SHAPE, IMAGE_META_SIZE) are properties, so they stay right
when an attribute is changed after construction (call `.validate()` after such edits).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

RESIZE_MODES = ("none", "square", "pad64", "crop")
BACKBONES = ("resnet50", "resnet101")
NORMALIZATIONS = ("mean_pixel", "per_image")
LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
              "mrcnn_mask_loss")
DERIVED = ("BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE")

# Mask R-CNN+ (bbanc MonusegConfig): channel order [R, G, B, distance, hematoxylin].
PAPER_MEAN_PIXEL = [176.31886506, 115.74123431, 155.43802069, 15.18166894, 123.75910]

# name -> (training overrides, extra inference overrides)
PRESETS: dict[str, tuple[dict, dict]] = {
    "matterport": ({}, {"GPU_COUNT": 1, "IMAGES_PER_GPU": 1}),
    "paper": (
        {"NAME": "paper", "IMAGES_PER_GPU": 1, "BACKBONE": "resnet50", "NUM_CLASSES": 2,
         "IMAGE_MIN_DIM": 256, "IMAGE_MAX_DIM": 256, "IMAGE_CHANNEL_COUNT": 5,
         "MEAN_PIXEL": PAPER_MEAN_PIXEL, "RPN_ANCHOR_SCALES": (8, 16, 32, 64, 128),
         "RPN_NMS_THRESHOLD": 0.8, "ROI_POSITIVE_RATIO": 0.4, "TRAIN_ROIS_PER_IMAGE": 600,
         "MAX_GT_INSTANCES": 400, "DETECTION_MAX_INSTANCES": 400,
         "DETECTION_NMS_THRESHOLD": 0.3, "IMAGE_RESIZE_MODE": "crop", "STEPS_PER_EPOCH": 60,
         "VALIDATION_STEPS": 0, "POST_NMS_ROIS_TRAINING": 2000,
         "POST_NMS_ROIS_INFERENCE": 2000, "LEARNING_RATE": 1e-4, "TRAIN_BN": False},
        {"GPU_COUNT": 1, "IMAGES_PER_GPU": 1, "IMAGE_RESIZE_MODE": "pad64",
         "RPN_NMS_THRESHOLD": 0.7, "DETECTION_MAX_INSTANCES": 2000},
    ),
    # DSB-2018-style changes (architecture notes 1.4). The 600x600 training crops are padded
    # to 640 ("square" mode) because the graph needs sizes divisible by 64.
    "ren": (
        {"NAME": "ren", "BACKBONE": "resnet101", "NUM_CLASSES": 2,
         "RPN_ANCHOR_SCALES": (8, 16, 32, 64, 128), "RPN_TRAIN_ANCHORS_PER_IMAGE": 320,
         "POST_NMS_ROIS_TRAINING": 2048, "POST_NMS_ROIS_INFERENCE": 2048,
         "TRAIN_ROIS_PER_IMAGE": 512, "MAX_GT_INSTANCES": 256, "DETECTION_MAX_INSTANCES": 400,
         "DETECTION_MIN_CONFIDENCE": 0.75, "DETECTION_NMS_THRESHOLD": 0.3,
         "DETECTION_MASK_THRESHOLD": 0.35, "IMAGE_RESIZE_MODE": "square",
         "IMAGE_MIN_DIM": 600, "IMAGE_MAX_DIM": 640},
        {"GPU_COUNT": 1, "IMAGES_PER_GPU": 1, "IMAGE_RESIZE_MODE": "pad64",
         "IMAGE_MIN_DIM": 256},
    ),
}


class Config:
    """Matterport's base configuration (same names and defaults) plus nucseg extras."""

    NAME = None
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2
    STEPS_PER_EPOCH = 1000
    VALIDATION_STEPS = 50
    BACKBONE = "resnet101"
    COMPUTE_BACKBONE_SHAPE = None
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]
    FPN_CLASSIF_FC_LAYERS_SIZE = 1024
    TOP_DOWN_PYRAMID_SIZE = 256
    NUM_CLASSES = 1
    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]
    RPN_ANCHOR_STRIDE = 1
    RPN_NMS_THRESHOLD = 0.7
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    PRE_NMS_LIMIT = 6000
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000
    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_MIN_SCALE = 0
    IMAGE_CHANNEL_COUNT = 3
    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])
    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    MASK_SHAPE = [28, 28]
    MAX_GT_INSTANCES = 100
    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3
    # nucseg extra (DSB-2018 style): binarisation threshold when masks are pasted back.
    DETECTION_MASK_THRESHOLD = 0.5
    # nucseg extra: "mean_pixel" (Matterport: image - MEAN_PIXEL) or "per_image" (each
    # channel standardised to zero mean, unit variance over the image; MEAN_PIXEL unused).
    IMAGE_NORMALIZATION = "mean_pixel"
    # nucseg extra: how the distance and hematoxylin maps of a 5-channel model become uint8
    # (nucseg.prediction.channels.ChannelScaling): "per_image" (the paper: each map's maximum -> 255) or
    # "fixed" (CHANNEL_SCALE_DISTANCE px and CHANNEL_SCALE_HSTAIN optical density -> 255).
    # nucseg extra: the channels after R, G, B (nucseg.prediction.channels.extra_channels); None: by
    # IMAGE_CHANNEL_COUNT (5: distance, hematoxylin). 4-channel models name their one extra.
    EXTRA_CHANNELS = None
    CHANNEL_SCALING = "per_image"
    CHANNEL_SCALE_DISTANCE = 18.0
    CHANNEL_SCALE_HSTAIN = 0.30
    # nucseg extra: the pixel size (um/px) the model was trained at; slides are resampled to it
    # (nucseg.prediction.slides). MoNuSeg tiles are 40x scans, about 0.25 um/px.
    MODEL_MPP = 0.25
    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 0.0001
    LOSS_WEIGHTS = {name: 1.0 for name in LOSS_NAMES}
    USE_RPN_ROIS = True
    TRAIN_BN = False
    GRADIENT_CLIP_NORM = 5.0

    def __init__(self, **overrides):
        names = set(self.attribute_names())
        for key, value in overrides.items():
            if key in DERIVED:
                continue  # derived values are recomputed (lets a saved dict round-trip)
            if key not in names:
                raise ValueError(f"unknown config attribute {key!r} (names are upper case, "
                                 f"as in Matterport's Config)")
            setattr(self, key, value)
        # Instance copies, so mutating one config never changes the class defaults.
        for key in self.attribute_names():
            setattr(self, key, copy.deepcopy(getattr(self, key)))
        self.MEAN_PIXEL = np.asarray(self.MEAN_PIXEL, dtype=np.float64)
        self.RPN_BBOX_STD_DEV = np.asarray(self.RPN_BBOX_STD_DEV, dtype=np.float64)
        self.BBOX_STD_DEV = np.asarray(self.BBOX_STD_DEV, dtype=np.float64)
        self.validate()

    # ----------------------------------------------------------------------------- derived
    @property
    def BATCH_SIZE(self) -> int:
        return self.IMAGES_PER_GPU * self.GPU_COUNT

    @property
    def IMAGE_SHAPE(self) -> np.ndarray:
        side = self.IMAGE_MIN_DIM if self.IMAGE_RESIZE_MODE == "crop" else self.IMAGE_MAX_DIM
        return np.array([side, side, self.IMAGE_CHANNEL_COUNT])

    @property
    def IMAGE_META_SIZE(self) -> int:
        return 1 + 3 + 3 + 4 + 1 + self.NUM_CLASSES

    # ----------------------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, inference: bool = False, **overrides) -> "Config":
        """A named configuration: "matterport", "paper" or "ren".

        `inference=True` adds the preset's inference values (batch 1, pad64, ...), as
        Matterport's *InferenceConfig subclasses do. Overriding IMAGE_CHANNEL_COUNT without
        MEAN_PIXEL keeps the preset's first N means (e.g. the paper's RGB means for 3 channels).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        train, infer = PRESETS[name]
        values = dict(train)
        if inference:
            values.update(infer)
        values["MEAN_PIXEL"] = values.get("MEAN_PIXEL", cls.MEAN_PIXEL)
        return cls(**_merge(values, overrides))

    # ----------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent attribute."""
        def fail(message):
            raise ValueError(f"invalid config: {message}")

        def positive_int(key, allow_zero=False):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
                    value < (0 if allow_zero else 1):
                fail(f"{key} must be a {'non-negative' if allow_zero else 'positive'} "
                     f"integer, got {value!r}")

        def fraction(key, low_open=False):
            value = getattr(self, key)
            if not isinstance(value, (int, float, np.floating)) or isinstance(value, bool) or \
                    not (0 < value <= 1 if low_open else 0 <= value <= 1):
                fail(f"{key} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")

        for key in ("GPU_COUNT", "IMAGES_PER_GPU", "NUM_CLASSES", "IMAGE_CHANNEL_COUNT",
                    "TOP_DOWN_PYRAMID_SIZE", "FPN_CLASSIF_FC_LAYERS_SIZE", "RPN_ANCHOR_STRIDE",
                    "RPN_TRAIN_ANCHORS_PER_IMAGE", "PRE_NMS_LIMIT", "POST_NMS_ROIS_TRAINING",
                    "POST_NMS_ROIS_INFERENCE", "TRAIN_ROIS_PER_IMAGE", "POOL_SIZE",
                    "MASK_POOL_SIZE", "MAX_GT_INSTANCES", "DETECTION_MAX_INSTANCES",
                    "IMAGE_MAX_DIM"):
            positive_int(key)
        for key in ("STEPS_PER_EPOCH", "VALIDATION_STEPS", "IMAGE_MIN_DIM"):
            positive_int(key, allow_zero=True)
        for key in ("RPN_NMS_THRESHOLD", "DETECTION_MIN_CONFIDENCE", "DETECTION_NMS_THRESHOLD",
                    "DETECTION_MASK_THRESHOLD"):
            fraction(key)
        fraction("ROI_POSITIVE_RATIO", low_open=True)
        if self.IMAGE_NORMALIZATION not in NORMALIZATIONS:
            fail(f"IMAGE_NORMALIZATION must be one of {', '.join(NORMALIZATIONS)}, "
                 f"got {self.IMAGE_NORMALIZATION!r}")
        try:
            from nucseg.prediction.channels import ChannelScaling

            ChannelScaling.from_config(self)
            if self.IMAGE_CHANNEL_COUNT != 3 or self.EXTRA_CHANNELS:
                from nucseg.prediction.channels import extra_channels

                extra_channels(self)
        except (TypeError, ValueError) as exc:
            fail(str(exc))
        if self.BACKBONE not in BACKBONES:
            fail(f"BACKBONE must be one of {', '.join(BACKBONES)}, got {self.BACKBONE!r}")
        if self.IMAGE_RESIZE_MODE not in RESIZE_MODES:
            fail(f"IMAGE_RESIZE_MODE must be one of {', '.join(RESIZE_MODES)}, "
                 f"got {self.IMAGE_RESIZE_MODE!r}")
        side = int(self.IMAGE_SHAPE[0])
        if side % 64:
            which = "IMAGE_MIN_DIM (crop mode)" if self.IMAGE_RESIZE_MODE == "crop" \
                else "IMAGE_MAX_DIM"
            fail(f"image size must be divisible by 64 (2**6, for the 6 downscalings); "
                 f"{which} is {side}")
        if self.IMAGE_RESIZE_MODE == "pad64" and self.IMAGE_MIN_DIM % 64:
            fail(f"pad64 mode needs IMAGE_MIN_DIM divisible by 64, got {self.IMAGE_MIN_DIM}")
        if self.IMAGE_MIN_SCALE < 0:
            fail(f"IMAGE_MIN_SCALE must be >= 0, got {self.IMAGE_MIN_SCALE}")
        if self.MEAN_PIXEL.ndim != 1 or len(self.MEAN_PIXEL) != self.IMAGE_CHANNEL_COUNT:
            fail(f"MEAN_PIXEL has {self.MEAN_PIXEL.size} values but IMAGE_CHANNEL_COUNT is "
                 f"{self.IMAGE_CHANNEL_COUNT} (one mean per input channel)")
        mask_shape = list(self.MASK_SHAPE)
        if mask_shape != [2 * self.MASK_POOL_SIZE] * 2:
            fail(f"MASK_SHAPE must be 2 x MASK_POOL_SIZE = [{2 * self.MASK_POOL_SIZE}, "
                 f"{2 * self.MASK_POOL_SIZE}] (the mask head ends with one x2 deconv), "
                 f"got {mask_shape}")
        if len(self.MINI_MASK_SHAPE) != 2 or min(self.MINI_MASK_SHAPE) < 1:
            fail(f"MINI_MASK_SHAPE must be (h, w), got {self.MINI_MASK_SHAPE!r}")
        if len(self.BACKBONE_STRIDES) != 5 or len(self.RPN_ANCHOR_SCALES) != 5:
            fail(f"BACKBONE_STRIDES and RPN_ANCHOR_SCALES need one entry per level P2..P6 (5), "
                 f"got {len(self.BACKBONE_STRIDES)} and {len(self.RPN_ANCHOR_SCALES)}")
        if not self.RPN_ANCHOR_RATIOS or min(self.RPN_ANCHOR_RATIOS) <= 0:
            fail(f"RPN_ANCHOR_RATIOS must be positive numbers, got {self.RPN_ANCHOR_RATIOS!r}")
        for key in ("RPN_BBOX_STD_DEV", "BBOX_STD_DEV"):
            value = getattr(self, key)
            if value.shape != (4,) or (value <= 0).any():
                fail(f"{key} must be 4 positive numbers, got {value.tolist()}")
        if set(self.LOSS_WEIGHTS) != set(LOSS_NAMES):
            fail(f"LOSS_WEIGHTS must have exactly the keys {', '.join(LOSS_NAMES)}")
        if self.TRAIN_BN not in (None, True, False):
            fail(f"TRAIN_BN must be None, true or false, got {self.TRAIN_BN!r}")
        if self.COMPUTE_BACKBONE_SHAPE is not None:
            fail("COMPUTE_BACKBONE_SHAPE (custom backbones) is not supported")

    # ----------------------------------------------------------------------------- I/O
    @classmethod
    def attribute_names(cls) -> list[str]:
        """The settable upper-case attributes (derived values excluded), sorted."""
        return sorted(name for name in dir(cls)
                      if name.isupper() and name not in DERIVED and not name.startswith("_")
                      and not callable(getattr(cls, name)))

    def to_dict(self, derived: bool = False) -> dict:
        """Plain Python values (lists, not arrays), suitable for YAML or JSON."""
        keys = self.attribute_names() + (list(DERIVED) if derived else [])
        return {key: _plain(getattr(self, key)) for key in keys}

    def to_yaml(self, path) -> Path:
        import yaml

        from nucseg.io import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=True), encoding="utf-8")
        return path

    @classmethod
    def from_yaml(cls, path) -> "Config":
        """Load a config saved by `to_yaml` (or any YAML mapping of attribute overrides).

        A `preset: NAME` key (and optional `inference: true`) starts from that preset.
        """
        import yaml

        from nucseg.io import InputError

        path = Path(path)
        if not path.is_file():
            raise InputError(path, "config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InputError(path, f"not valid YAML ({exc.__class__.__name__}: {exc})") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InputError(path, "a config file must be a YAML mapping of ATTRIBUTE: value")
        try:
            preset = data.pop("preset", None)
            inference = bool(data.pop("inference", False))
            if preset is not None:
                return cls.preset(preset, inference=inference, **data)
            return cls(**data)
        except ValueError as exc:
            raise InputError(path, str(exc)) from None
        except TypeError as exc:    # e.g. MASK_SHAPE: 28 where a pair is needed
            raise InputError(path, f"a value has the wrong type ({exc})") from None

    def display(self) -> None:
        """Print every attribute, sorted, as Matterport's Config.display does."""
        print("\nConfigurations:")
        for key, value in self.to_dict(derived=True).items():
            print(f"{key:30} {value}")
        print()

    def copy(self, **overrides) -> "Config":
        """A new config with overrides (channel-count changes keep the first N means)."""
        return type(self)(**_merge(self.to_dict(), overrides))

    def __repr__(self) -> str:
        return f"Config(NAME={self.NAME!r}, BACKBONE={self.BACKBONE!r}, " \
               f"NUM_CLASSES={self.NUM_CLASSES}, IMAGE_CHANNEL_COUNT={self.IMAGE_CHANNEL_COUNT})"


def _merge(values: dict, overrides: dict) -> dict:
    """values updated by overrides; a new IMAGE_CHANNEL_COUNT alone keeps the first N means."""
    merged = dict(values)
    if "IMAGE_CHANNEL_COUNT" in overrides and "MEAN_PIXEL" not in overrides:
        channels = int(overrides["IMAGE_CHANNEL_COUNT"])
        mean = list(np.asarray(merged.get("MEAN_PIXEL", Config.MEAN_PIXEL)).tolist())
        if channels <= len(mean):
            merged["MEAN_PIXEL"] = mean[:channels]
    merged.update(overrides)
    return merged


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def load_config(spec=None, **overrides) -> Config:
    """A preset name or a YAML path (None -> matterport defaults), plus overrides."""
    if spec is None:
        return Config(**overrides)
    if str(spec) in PRESETS:
        return Config.preset(str(spec), **overrides)
    path = Path(spec)
    if not path.exists() and path.suffix.lower() not in (".yaml", ".yml") \
            and len(path.parts) == 1:
        raise ValueError(f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a config "
                         f"file")
    base = Config.from_yaml(path)
    return base.copy(**overrides) if overrides else base
