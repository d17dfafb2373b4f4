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
