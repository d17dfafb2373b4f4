"""Cross-training folds: the paper's organ-group ensemble and plain k-fold splits."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
ORGAN_GROUPS = {"breast": ("breast",), "kidney": ("kidney",), "liver": ("liver",),
                "prostate": ("prostate",), "bladder+colon+stomach": ("bladder", "colon", "stomach")}


def organ_fold_name(group: str) -> str:
    """The sub-directory of the model trained without an organ group."""
    return f"without_{group.replace('+', '_')}"


def organ_folds(metadata_csv, names) -> list[tuple[str, list[str], list[str]]]:
    """The paper's five models: (fold name, training stems, left-out stems), one per organ group.

    metadata CSV needs columns id and organ; images of organs outside the groups always train.
    """
    from nucseg.io import InputError
    from nucseg.scoring import organ_table

    path = Path(metadata_csv)
    organ_of = organ_table(path)
    unknown = [n for n in names if n not in organ_of]
    if unknown:
        raise InputError(path, f"no organ for {len(unknown)} training image(s), e.g. "
                               f"{unknown[0]}")
    folds = []
    for group, organs in ORGAN_GROUPS.items():
        held = [n for n in names if organ_of[n] in organs]
        if not held:
            continue
        folds.append((organ_fold_name(group),
                      [n for n in names if n not in held], held))
    if not folds:
        raise ValueError("no training image belongs to any organ group")
    return folds


def k_folds(names, k: int, seed: int = 0) -> list[tuple[str, list[str], list[str]]]:
    """Plain k-fold cross-training: k models, each without one of k disjoint parts."""
    if k < 2 or k > len(names):
        raise ValueError(f"k-fold needs 2 <= k <= number of images ({len(names)}), got {k}")
    order = np.random.default_rng(seed).permutation(len(names))
    parts = np.array_split(order, k)
    return [(f"fold{i + 1}", [names[j] for j in order if j not in set(part)],
             [names[j] for j in part]) for i, part in enumerate(parts)]
