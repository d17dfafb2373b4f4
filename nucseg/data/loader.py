"""Training batches: augment, build GT arrays, mini masks and RPN targets, in worker threads.

Every sample's randomness comes from a generator seeded by (seed, epoch, step, slot), so a run
is reproducible under `--seed` whatever order the workers finish in, and a resumed run sees
the same images at the same steps. Two worker threads keep both cores busy (NumPy, OpenCV and
SciPy release the GIL) while the model trains on the previous batch.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from nucseg.data.augment import AugmentOptions, augment

BATCH_KEYS = ("input_image", "input_image_meta", "input_rpn_match", "input_rpn_bbox",
              "input_gt_class_ids", "input_gt_boxes", "input_gt_masks")


@dataclass
class LoaderOptions:
    seed: int = 0
    normalize: bool = False      # per-image zero-mean unit-variance instead of MEAN_PIXEL
    #                              (also on when config.IMAGE_NORMALIZATION is "per_image")
    workers: int = 2
    prefetch: int = 4


def instances_from_labels(labels: np.ndarray, class_of=None):
    """Bool masks [H, W, N], class ids [N], boxes [N, 4] (int32, y2/x2 exclusive) of a label map."""
    from scipy import ndimage

    ids, boxes = [], []
    for instance_id, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        ids.append(instance_id)
        boxes.append((box[0].start, box[1].start, box[0].stop, box[1].stop))
    masks = np.zeros(labels.shape + (len(ids),), bool)
    for k, (instance_id, (y1, x1, y2, x2)) in enumerate(zip(ids, boxes)):
        masks[y1:y2, x1:x2, k] = labels[y1:y2, x1:x2] == instance_id
    class_ids = np.array([class_of(i) if class_of else 1 for i in ids], np.int32)
    return masks, class_ids, np.array(boxes, np.int32).reshape(-1, 4)


def channel_stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (1 where a channel is constant)."""
    image = np.asarray(image, np.float32)
    mean = image.mean(axis=(0, 1))
    std = image.std(axis=(0, 1))
    return mean, np.where(std > 0, std, 1.0).astype(np.float32)


def standardize(image: np.ndarray, stats=None) -> np.ndarray:
    """Per-image, per-channel zero mean and unit variance (constant channels become 0);
    `stats` (mean, std) from a larger image, e.g. the tile a training crop was cut from."""
    mean, std = stats if stats is not None else channel_stats(image)
    return ((np.asarray(image, np.float32) - mean) / std).astype(np.float32)


class TrainingLoader:
    """Batches for the training graph, deterministic in (seed, epoch, step)."""

    def __init__(self, dataset, config, augment_options: AugmentOptions | None = None,
                 options: LoaderOptions | None = None):
        from nucseg.mrcnn.anchors import get_pixel_anchors

        self.dataset = dataset
        self.config = config
        self.augment_options = augment_options or AugmentOptions()
        if not self.augment_options.crop_size:
            self.augment_options = replace(self.augment_options, crop_size=_crop_size(config))
        self.options = options or LoaderOptions()
        self.image_shape = tuple(int(v) for v in config.IMAGE_SHAPE)
        if self.augment_options.crop_size > self.image_shape[0]:
            raise ValueError(f"crop size {self.augment_options.crop_size} exceeds the training "
                             f"image size {self.image_shape[0]} of the config")
        self.anchors = get_pixel_anchors(config, self.image_shape)
        self.per_image = bool(self.options.normalize) or \
            getattr(config, "IMAGE_NORMALIZATION", "mean_pixel") == "per_image"
        self.hstain_index = _hstain_index(config) if self.augment_options.stain else None

    # ------------------------------------------------------------------------- one sample
    def _image_index(self, epoch: int, position: int) -> int:
        n = len(self.dataset)
        order = np.random.default_rng([self.options.seed, epoch, 7]).permutation(n)
        return int(order[position % n])

    def sample(self, epoch: int, step: int, slot: int = 0) -> dict:
        from nucseg.mrcnn.molding import compose_image_meta, minimize_mask, mold_image
        from nucseg.mrcnn.targets import build_rpn_targets

        config = self.config
        rng = np.random.default_rng([self.options.seed, epoch, step, slot])
        index = self._image_index(epoch, step * config.BATCH_SIZE + slot)
        source = self.dataset.load(index)
        image, labels, valid = augment(source.image, source.labels, self.augment_options,
                                       seed=int(rng.integers(2**31)), return_valid=True)
        if self.hstain_index is not None:
            image = restain_hematoxylin(image, valid, self.hstain_index, config)
        masks, class_ids, boxes = instances_from_labels(labels, source.class_of)
        if len(class_ids) > config.MAX_GT_INSTANCES:
            keep = np.sort(rng.choice(len(class_ids), config.MAX_GT_INSTANCES, replace=False))
            masks, class_ids, boxes = masks[..., keep], class_ids[keep], boxes[keep]

        size = self.image_shape[0]
        h, w = image.shape[:2]
        top, left = (size - h) // 2, (self.image_shape[1] - w) // 2
        # as at inference: per-image standardisation with the whole tile's statistics, 0 (its
        # mean) outside the image; MEAN_PIXEL subtraction after padding with 0 (so padding
        # and rotated-in corners hold -MEAN_PIXEL)
        canvas = np.zeros(self.image_shape, np.float32)
        if self.per_image:
            stats = channel_stats(source.image)
            canvas[top:top + h, left:left + w] = np.where(
                valid[..., None], standardize(image, stats), 0.0)
        else:
            canvas[top:top + h, left:left + w] = image
            canvas = mold_image(canvas, config)
        full = np.zeros(self.image_shape[:2] + (masks.shape[-1],), bool)
        full[top:top + h, left:left + w] = masks
        boxes = boxes + np.array([top, left, top, left], np.int32)
        window = (top, left, top + h, left + w)

        molded = canvas
        meta = compose_image_meta(index, source.image.shape, canvas.shape, window, 1.0,
                                  np.ones(config.NUM_CLASSES, np.int32)).astype(np.float32)
        rpn_match, rpn_bbox = build_rpn_targets(
            self.anchors, class_ids, boxes, config.RPN_TRAIN_ANCHORS_PER_IMAGE,
            config.RPN_BBOX_STD_DEV, rng)
        if config.USE_MINI_MASK:
            gt_masks = minimize_mask(boxes, full, config.MINI_MASK_SHAPE)
        else:
            gt_masks = full
        n, cap = len(class_ids), config.MAX_GT_INSTANCES
        padded_masks = np.zeros(gt_masks.shape[:2] + (cap,), bool)
        padded_masks[..., :n] = gt_masks
        return {
            "input_image": molded,
            "input_image_meta": meta,
            "input_rpn_match": rpn_match[:, None].astype(np.int32),
            "input_rpn_bbox": rpn_bbox.astype(np.float32),
            "input_gt_class_ids": np.pad(class_ids, (0, cap - n)).astype(np.int32),
            "input_gt_boxes": np.pad(boxes, ((0, cap - n), (0, 0))).astype(np.float32),
            "input_gt_masks": padded_masks,
        }

    def batch(self, epoch: int, step: int) -> dict:
        samples = [self.sample(epoch, step, slot) for slot in range(self.config.BATCH_SIZE)]
        return {key: np.stack([s[key] for s in samples]) for key in BATCH_KEYS}

    # ------------------------------------------------------------------------- streaming
    def batches(self, epoch: int, steps, start: int = 0):
        """Yield (step, batch) for step in [start, steps), computed ahead by worker threads."""
        workers = max(1, int(self.options.workers))
        ahead = max(workers, int(self.options.prefetch))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nucseg-loader") as pool:
            pending = {}
            nxt = start
            for step in range(start, steps):
                while nxt < steps and nxt < step + ahead:
                    pending[nxt] = pool.submit(self.batch, epoch, nxt)
                    nxt += 1
                yield step, pending.pop(step).result()


def _hstain_index(config) -> int | None:
    """Where the hematoxylin channel sits in the model input, or None (no such channel)."""
    from nucseg.prediction.channels import extra_channels

    extras = list(extra_channels(config))
    return 3 + extras.index("hematoxylin") if "hematoxylin" in extras else None


def restain_hematoxylin(image: np.ndarray, valid: np.ndarray, index: int, config) -> np.ndarray:
    """The crop with its hematoxylin channel computed again from its (stain-augmented) RGB,
    scaled as the model's channel scaling says, 0 outside the image (padding, rotated-in
    corners), so the channel follows the colours the model is shown. Per-image scaling here
    uses the crop's own maximum (the tile's is gone after a stain change)."""
    from nucseg.prediction.channels import ChannelScaling
    from nucseg.stain import hematoxylin

    out = image.copy()
    # black padding has a high optical density: zero it before per-image scaling takes the max
    h = np.where(valid, hematoxylin(image[..., :3]), 0.0)
    out[..., index] = ChannelScaling.from_config(config).hstain(h)      # 0 stays 0
    return out


def _crop_size(config) -> int:
    """Training crop side: IMAGE_MIN_DIM (256 for the paper, 600 for `ren`), capped by the
    training image size (crops smaller than IMAGE_SHAPE are zero-padded, centred)."""
    side = int(config.IMAGE_SHAPE[0])
    return min(int(config.IMAGE_MIN_DIM) or side, side)
