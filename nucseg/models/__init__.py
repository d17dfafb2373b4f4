"""Models that ship with nucseg: `nucseg predict` without `-m` runs the default one.

A shipped model is a folder `nucseg/models/<name>/` installed with the package:

| file | content |
|---|---|
| `model.yaml` | manifest: name, backbone, channels, training data, license, pixel size, the tuned thresholds, figures, and the sha256 of every other file |
| `config.yaml` | the Mask R-CNN(+) Config it was trained with |
| `mask_rcnn.h5` | Matterport-layout weights stored as float16 (loaded as float32) |
| `unet/` | the distance U-Net (`unet.json`, `unet.weights.h5`, float16) for 5-channel models |
| `MODEL.md` | the model card: data, license, recipe, commands, times, measured figures |

Every file is checked against the manifest's sha256 before anything is loaded, so a corrupted
or truncated copy is one clear error, never a wrong result. `nucseg models pack` writes such a
folder from a training run (nucseg/models/pack.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nucseg.io import InputError, read_tagged_yaml, sha256

MODELS_DIR = Path(__file__).resolve().parent
MANIFEST = "model.yaml"
MANIFEST_FORMAT = "nucseg-shipped-model"
DEFAULT_MODEL = "monuseg-r50"


@dataclass(frozen=True)
class ShippedModel:
    """A verified shipped model on disk: paths and its manifest."""

    name: str
    folder: Path
    manifest: dict = field(repr=False)

    @property
    def weights(self) -> Path:
        return self.folder / self.manifest.get("weights", "mask_rcnn.h5")

    @property
    def config(self) -> Path:
        return self.folder / self.manifest.get("config", "config.yaml")

    @property
    def unet_dir(self) -> Path | None:
        unet = self.manifest.get("unet")
        return self.folder / unet if unet else None

    @property
    def thresholds(self) -> dict:
        """Prediction settings chosen on training data (the StarDist thresholds.json idea)."""
        return dict(self.manifest.get("thresholds") or {})

    def config_overrides(self, overrides: dict | None = None) -> dict:
        """Config overrides with the shipped min confidence wherever the user set none."""
        merged = dict(overrides or {})
        if merged.get("DETECTION_MIN_CONFIDENCE") is None and "min_confidence" in self.thresholds:
            merged["DETECTION_MIN_CONFIDENCE"] = float(self.thresholds["min_confidence"])
        return merged


def available(models_dir=None) -> list[str]:
    """Names of the models shipped in `models_dir` (default: the installed package's)."""
    root = Path(models_dir) if models_dir else MODELS_DIR
    return sorted(p.parent.name for p in root.glob(f"*/{MANIFEST}"))


def read_manifest(folder) -> dict:
    path = Path(folder) / MANIFEST
    data = read_tagged_yaml(path, MANIFEST_FORMAT, "nucseg model manifest")
    if not isinstance(data.get("files"), dict) or not data["files"]:
        raise InputError(path, "the manifest lists no files with their sha256")
    return data


def find(name: str | None = None, models_dir=None) -> ShippedModel:
    """The shipped model `name` (default DEFAULT_MODEL), not yet verified."""
    name = name or DEFAULT_MODEL
    root = Path(models_dir) if models_dir else MODELS_DIR
    names = available(root)
    if name not in names:
        there = ", ".join(names) if names else "none are installed"
        raise InputError(name, f"no shipped model of that name (shipped models: {there}); "
                               "or give a model file or run directory")
    folder = root / name
    return ShippedModel(name, folder, read_manifest(folder))


def verify(model: ShippedModel) -> ShippedModel:
    """Check every listed file's presence and sha256; raise InputError naming the first bad
    one. Returns the model, so `verify(find(name))` reads well."""
    for relative, expected in model.manifest["files"].items():
        path = model.folder / relative
        if not path.is_file():
            raise InputError(path, f"file of shipped model '{model.name}' is missing; "
                                   "reinstall nucseg")
        if sha256(path) != str(expected):
            raise InputError(path, f"file of shipped model '{model.name}' is corrupted or "
                                   "truncated (sha256 differs from its model.yaml); reinstall "
                                   "nucseg")
    return model


def named(arg) -> ShippedModel | None:
    """The verified shipped model that a command-line argument names, or None when the
    argument is a path (it exists, ends in .h5, or has a folder part). An unknown name is an
    InputError listing the shipped names."""
    path = Path(str(arg))
    if path.exists() or path.suffix.lower() == ".h5" or len(path.parts) > 1:
        return None
    return verify(find(str(arg)))


def show(name: str | None = None, models_dir=None) -> dict:
    """The manifest of a shipped model, with its folder and total size."""
    model = find(name, models_dir)
    size = sum((model.folder / f).stat().st_size for f in model.manifest["files"]
               if (model.folder / f).is_file())
    return {**model.manifest, "folder": str(model.folder), "size_bytes": size}


def load(name: str | None = None, batch_size: int = 1, models_dir=None, **overrides):
    """(MaskRCNN inference model, LoadedUNet or None, thresholds) of a verified shipped model.

    `overrides` are Config values (e.g. DETECTION_MIN_CONFIDENCE); by default the shipped
    threshold applies.
    """
    from nucseg.model_files import ModelSpec, load_model

    model = verify(find(name, models_dir))
    detector = load_model(ModelSpec(model.weights, model.config), batch_size,
                          **model.config_overrides(overrides))
    detector.name = model.name
    unet = None
    if model.unet_dir is not None:
        from nucseg.unet import load_unet

        unet = load_unet(model.unet_dir)
    return detector, unet, model.thresholds
