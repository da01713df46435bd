"""Assign every image to exactly one of train / val / test: seeded, stratified, pure.

Schemes, named for what they are (the name is recorded in dataset.json):

    official     keep the source's train and test; carve val from train (a source val split,
                 if it has one, is kept as is)
    pooled:R     pool every image and re-split per class: R to train+val, the rest to test,
                 then val from that train part (the hackathon team's protocol; its scores must
                 never be compared with the official benchmark)

Every choice is per class (stratified) and depends only on the seed and the image paths, not
on the order of the rows, so the same source and seed give the same split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from carsweep.errors import UserError

SCHEMES = ("official", "pooled:R")


@dataclass(frozen=True)
class SplitScheme:
    kind: str  # "official" or "pooled"
    train_ratio: float | None = None  # pooled only: share of each class kept for train+val

    def __str__(self) -> str:
        return self.kind if self.kind == "official" else f"pooled:{self.train_ratio:g}"


def parse_scheme(text: str) -> SplitScheme:
    """"official" or "pooled:R" with 0 < R < 1 (e.g. pooled:0.7); anything else a UserError."""
    if text == "official":
        return SplitScheme("official")
    kind, _, ratio = text.partition(":")
    if kind == "pooled":
        try:
            value = float(ratio)
        except ValueError:
            value = None
        if value is not None and 0 < value < 1:
            return SplitScheme("pooled", value)
        raise UserError(f"--split {text!r}: the pooled ratio must be a number between 0 and 1, "
                        "for example pooled:0.7")
    raise UserError(f"--split {text!r} is unknown; valid: official, pooled:R (e.g. pooled:0.7)")


def check_val_fraction(val_fraction: float) -> float:
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction is {val_fraction}, but must be >= 0 and < 1")
    return val_fraction


def split_manifest(df: pd.DataFrame, scheme: str | SplitScheme, seed: int,
                   val_fraction: float) -> pd.DataFrame:
    """A copy of `df` (columns path, class_name, source_split) with its `split` column set."""
    scheme = parse_scheme(scheme) if isinstance(scheme, str) else scheme
    check_val_fraction(val_fraction)
    out = df.copy()
    if scheme.kind == "official":
        out["split"] = _official(out)
    else:
        out["split"] = _take_per_class(out, out.index, 1 - scheme.train_ratio, "test", "train",
                                       seed, salt="test")
    if (out["split"] == "val").any():
        return out  # the source brought its own val split (official scheme): keep it
    train = out.index[out["split"] == "train"]
    out.loc[train, "split"] = _take_per_class(out, train, val_fraction, "val", "train", seed,
                                              salt="val")
    return out


def _official(df: pd.DataFrame) -> pd.Series:
    present = set(df["source_split"])
    if not {"train", "test"} <= present:
        found = sorted(s for s in present if s) or ["none"]
        raise UserError(f"the source has no official train/test split (found: "
                        f"{', '.join(found)}); use --split pooled:R, e.g. pooled:0.8")
    unknown = present - {"train", "val", "test"}
    if unknown:
        raise UserError(f"source splits {sorted(unknown)} are unknown; valid: train, val, test")
    return df["source_split"].copy()


def _take_per_class(df: pd.DataFrame, index: pd.Index, fraction: float, taken: str, rest: str,
                    seed: int, *, salt: str) -> pd.Series:
    """Label `round(fraction * n)` images of each class `taken` and the others `rest`.

    Each class keeps at least one `rest` image; a class of 2+ images gives at least one
    `taken` image when fraction > 0, so every class appears on both sides when it can.
    """
    labels = pd.Series(rest, index=index, dtype=object)
    subset = df.loc[index]
    for class_name, group in subset.groupby("class_name", sort=True):
        paths = group["path"].sort_values(kind="stable")  # order-independent
        n = len(paths)
        count = int(round(fraction * n))
        if fraction > 0 and n >= 2:
            count = max(count, 1)
        count = min(count, n - 1)
        rng = np.random.default_rng([seed, _stable_hash(salt), _stable_hash(str(class_name))])
        chosen = rng.permutation(n)[:count]
        labels.loc[paths.index[chosen]] = taken
    return labels


def _stable_hash(text: str) -> int:
    """A process-independent hash (Python's hash() of str is salted per process)."""
    import hashlib

    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:4], "little")
