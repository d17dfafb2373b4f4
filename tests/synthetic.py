"""Small synthetic training sets written to disk, for data-loader and training tests."""
import numpy as np

from nucseg.io import write_labels, write_rgb


def write_square_nuclei(root, name: str, size: int, count: int, side: int, seed: int):
    """One random RGB tile with `count` square nuclei of `side` px: root/im/<name>.png and
    root/lab/<name>.tif. Returns the label map."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    for k in range(1, count + 1):
        y, x = rng.integers(0, size - side - 1, 2)
        labels[y:y + side, x:x + side] = k
    write_rgb(root / "im" / f"{name}.png", rng.integers(0, 255, (size, size, 3)).astype(np.uint8))
    write_labels(root / "lab" / f"{name}.tif", labels)
    return labels


def write_random_detector_run(run_dir, name: str = "paper", epoch: int = 5, **overrides):
    """A run directory with a random-weight ResNet-50 Mask R-CNN+ (paper preset, 5 channels,
    small inference limits) whose class head calls every ROI a confident nucleus, so that
    detection yields many boxes without training. Returns (weights path, Config)."""
    from nucseg.mrcnn import Config, MaskRCNN

    settings = dict(IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=64, DETECTION_MAX_INSTANCES=150,
                    POST_NMS_ROIS_INFERENCE=100, PRE_NMS_LIMIT=500)   # proposals < max
    config = Config.preset("paper", **{**settings, **overrides})
    run_dir.mkdir(parents=True, exist_ok=True)
    model = MaskRCNN(config.copy(GPU_COUNT=1, IMAGES_PER_GPU=1))
    logits = model.keras_model.get_layer("mrcnn_class_logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 0, bias + [0, 5]])
    weights = run_dir / f"mask_rcnn_{name}_{epoch:04d}.h5"
    model.save_weights(weights)
    config.to_yaml(run_dir / "config.yaml")
    return weights, config
