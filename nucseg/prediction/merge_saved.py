"""`nucseg merge`: saved member files (`*_memberNN.npz`) grouped by image and merged later,
written as `nucseg predict` writes them (labels, GeoJSON, CSV, overlay, record)."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

from nucseg.io import InputError, make_record, read_rgb, run_batch, write_record
from nucseg.prediction.channels import ChannelSources
from nucseg.prediction.members import Member, load_member
from nucseg.prediction.merge import merge_members
from nucseg.prediction.predict import (PredictOptions, _hstain_for_table, member_summary,
                                       output_files, write_outputs)


def group_member_files(paths) -> tuple[dict[str, list[tuple[Path, Member]]], dict[str, str]]:
    """Member files grouped by the image they were made from (name order within a group), and
    the error of each unreadable file keyed by the image its name points to: merging that
    image without one of its members would silently change the result, so it is skipped (so is
    an image whose members were made on different sizes)."""
    groups: dict = {}
    unreadable: dict = {}
    for path in sorted(Path(p) for p in paths):
        try:
            member = load_member(path)
        except InputError as exc:
            unreadable.setdefault(path.stem.split("_member")[0], str(exc))
            continue
        stem = Path(member.image).stem if member.image else path.stem.split("_member")[0]
        group = groups.setdefault(stem, [])
        if group and tuple(member.image_shape) != tuple(group[0][1].image_shape):
            (h, w), (h0, w0) = member.image_shape, group[0][1].image_shape
            unreadable.setdefault(stem, f"{path}: member made on a {h}x{w} image, but "
                                        f"{group[0][0]} on {h0}x{w0}")
        group.append((path, member))
    return groups, unreadable


def _find_image(stem: str, member: Member, image_dir) -> Path | None:
    if image_dir is not None:
        for candidate in sorted(Path(image_dir).glob(f"{stem}.*")):
            if candidate.is_file():
                return candidate
        return None
    path = Path(member.image) if member.image else None
    return path if path is not None and path.is_file() else None


def merge_member_group(stem: str, group, outdir, opts: PredictOptions, image_dir=None,
                       sources: ChannelSources | None = None) -> dict:
    """Merge one image's saved members and write the same outputs predict writes."""
    start = time.perf_counter()
    paths = [p for p, _ in group]
    members = [m for _, m in group]
    merged = merge_members(members, opts.merge, **opts.merge_kwargs(len(members)))
    image = _find_image(stem, members[0], image_dir)
    rgb = read_rgb(image) if image is not None else None
    if rgb is not None and rgb.shape[:2] != members[0].image_shape:
        raise InputError(image, f"image is {rgb.shape[0]}x{rgb.shape[1]} but its members were "
                                f"made on {members[0].image_shape[0]}x"
                                f"{members[0].image_shape[1]}")
    hstain = _hstain_for_table(rgb, stem, sources) if rgb is not None and opts.csv else None
    files = output_files(outdir, stem, opts)
    outputs = write_outputs(files, merged, rgb, hstain)
    record = make_record(
        "merge", inputs=paths, checksums=True, options=asdict(opts), merge=dict(merged.info),
        image=str(image) if image else None, nuclei=len(merged),
        members=member_summary(members), outputs=outputs,
        timings_seconds={"total": round(time.perf_counter() - start, 3)})
    write_record(files["record"], record)
    return record


def merge_member_files(paths, outdir, opts: PredictOptions, image_dir=None,
                       sources: ChannelSources | None = None) -> tuple[list[str], int]:
    """`nucseg merge`: group member files by image, merge each group. Returns (failures, n)."""
    groups, unreadable = group_member_files(paths)
    failures = []
    for stem, error in sorted(unreadable.items()):
        failures.append(f"{error} (image {stem} not merged)")
        print(f"error: {failures[-1]}", file=sys.stderr)
    items = sorted((stem, group) for stem, group in groups.items() if stem not in unreadable)
    failures += run_batch(items, lambda item: merge_member_group(item[0], item[1], outdir, opts,
                                                                 image_dir, sources),
                          desc="merge", progress=opts.progress)
    return failures, len(items) + len(unreadable)


def merge_from_paths(member_paths, outdir, opts: PredictOptions, image_dir=None,
                     sources: ChannelSources | None = None) -> tuple[list[str], int]:
    """`nucseg merge`: member files and directories of them (*.npz)."""
    from nucseg.io import expand_inputs

    paths = expand_inputs(member_paths, extensions=(".npz",))
    if not paths:
        raise ValueError("no member files (.npz) given")
    return merge_member_files(paths, outdir, opts, image_dir, sources)
