"""Prediction: from an image (tile or whole slide) to merged nuclei and the files that hold them.

One module per step, in the order an image takes:
- channels.py    the model's input channels (RGB, hematoxylin, distance) and their scaling
- resolution.py  the image's pixel size and resampling to the model's
- tiling.py      overlapping tiles of a large image, and their detections put back together
- tta.py         test-time augmentation views and their inverses
- members.py     one model's (or one view's) detections: the unit that is merged
- overlap.py     mask overlaps between members
- merge.py       merging members (average vote, MASK-NMS, ...)
- export.py      label maps, GeoJSON, CSV, overlays
- predict.py     wires the above for a batch of tiles (`nucseg predict`)
- merge_saved.py saved member files merged later and written the same way (`nucseg merge`)
- slides/        whole-slide images: reader, tissue, blocks, streamed outputs, resume
- distributed.py the same work as Dask tasks (`--dask`)
"""
