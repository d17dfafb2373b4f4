"""`nucseg models list|show|pack`: the models that ship with nucseg."""
from __future__ import annotations

import click

from nucseg.cli.common import friendly_errors, main


@main.group("models")
def models_group():
    """Shipped models: `nucseg predict` without -m runs the default one.

    \b
    Example:
      nucseg models list
      nucseg models show monuseg-r50
      nucseg predict tiles/ -o out/                  # the default shipped model
      nucseg predict tiles/ -m monuseg-r50 -o out/   # a shipped model by name
    """


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@models_group.command("list")
@friendly_errors
def list_models():
    """Name, backbone, channels, training data, license, size and figures of each model."""
    from nucseg.models import DEFAULT_MODEL, available, show

    names = available()
    if not names:
        click.echo("no models are shipped with this installation")
        return
    for name in names:
        info = show(name)
        default = " (default)" if name == DEFAULT_MODEL else ""
        figures = info.get("figures") or {}
        shown = "; ".join(f"{k}: {v}" for k, v in figures.items() if not isinstance(v, dict))
        click.echo(f"{name}{default}\n  {info.get('backbone', '?')}, channels "
                   f"{'+'.join(info.get('channels', []))}, trained on "
                   f"{info.get('training_data', '?')}\n  license: {info.get('license', '?')}; "
                   f"size {_size(info['size_bytes'])}; pixel size "
                   f"{info.get('pixel_size_um', '?')} um/px"
                   + (f"\n  {shown}" if shown else ""))


@models_group.command("show")
@click.argument("name", required=False)
@friendly_errors
def show_model(name):
    """Everything a shipped model's manifest says (default: the default model), as YAML."""
    import yaml

    from nucseg.models import show

    click.echo(yaml.safe_dump(show(name), sort_keys=False), nl=False)


@models_group.command("pack")
@click.option("-m", "--model", "model_path", required=True, type=click.Path(exists=True),
              help="A run directory (newest checkpoint) or a Matterport .h5 with its config.")
@click.option("--unet", "unet_dir", type=click.Path(file_okay=False, exists=True),
              help="The distance U-Net directory the model was trained with (5-channel models).")
@click.option("--name", required=True, help="The model's name (its folder name).")
@click.option("--info", "info_yaml", type=click.Path(dir_okay=False, exists=True),
              help="YAML merged into the manifest: backbone, channels, training_data, license, "
                   "pixel_size_um, magnification, figures, ...")
@click.option("--thresholds", "thresholds_yaml", type=click.Path(dir_okay=False, exists=True),
              help="YAML of prediction settings chosen on training data (min_confidence, "
                   "min_members, mask_threshold).")
@click.option("--model-card", type=click.Path(dir_okay=False, exists=True),
              help="MODEL.md to ship beside the weights.")
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False),
              help="New folder, e.g. nucseg/models/<name> to ship it with the package.")
@friendly_errors
def pack(model_path, unet_dir, name, info_yaml, thresholds_yaml, model_card, outdir):
    """Pack a trained model for shipping: float16 weights, config, U-Net, sha256 manifest.

    \b
    Example:
      nucseg models pack -m runs/ship --unet unet/ --name monuseg-r50 \\
          --info info.yaml --thresholds thresholds.yaml --model-card MODEL.md \\
          -o nucseg/models/monuseg-r50
    """
    from nucseg.io import read_yaml_mapping
    from nucseg.model_files import resolve_model
    from nucseg.models.pack import pack_model

    def read(path):
        return read_yaml_mapping(path, "YAML mapping") if path is not None else {}

    spec = resolve_model(model_path)
    out = pack_model(spec.weights, spec.config, outdir, name, unet_dir, read(thresholds_yaml),
                     read(info_yaml), model_card)
    click.echo(f"packed {spec.weights} into {out}")
