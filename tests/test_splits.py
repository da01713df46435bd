"""Splits: pure functions on a table; seeded, stratified, disjoint and order-independent."""

from __future__ import annotations

import pandas as pd
import pytest

from carsweep.data.splits import SplitScheme, parse_scheme, split_manifest
from carsweep.errors import UserError

COUNTS = {"a": (40, 30), "b": (20, 15), "c": (9, 7)}  # class -> (train, test) images


def table(counts: dict[str, tuple[int, int]] = COUNTS) -> pd.DataFrame:
    rows = [{"path": f"{split}/{name}/{i:03d}.jpg", "class_name": name, "source_split": split}
            for name, (train, test) in counts.items()
            for split, n in (("train", train), ("test", test)) for i in range(n)]
    return pd.DataFrame(rows)


def per_class(df: pd.DataFrame) -> dict[tuple[str, str], int]:
    return df.groupby(["class_name", "split"]).size().to_dict()


def test_official_keeps_test_and_carves_a_stratified_val_from_train():
    out = split_manifest(table(), "official", seed=0, val_fraction=0.25)
    assert (out.loc[out["source_split"] == "test", "split"] == "test").all()
    assert (out.loc[out["source_split"] == "train", "split"] != "test").all()
    assert per_class(out) == {
        ("a", "test"): 30, ("a", "train"): 30, ("a", "val"): 10,
        ("b", "test"): 15, ("b", "train"): 15, ("b", "val"): 5,
        ("c", "test"): 7, ("c", "train"): 7, ("c", "val"): 2,  # round(9 * 0.25) = 2
    }


def test_pooled_ratio_is_per_class_and_val_comes_from_the_pooled_train():
    out = split_manifest(table(), "pooled:0.7", seed=0, val_fraction=0.1)
    counts = per_class(out)
    # a: 70 images -> round(70 * 0.3) = 21 test; 49 left -> round(4.9) = 5 val, 44 train
    assert counts[("a", "test")] == 21
    assert counts[("a", "val")] == 5
    assert counts[("a", "train")] == 44
    assert counts[("c", "test")] == 5  # round(16 * 0.3) = 5
    assert counts[("c", "val")] == 1  # round(11 * 0.1) = 1
    # pooling really mixes the source splits
    assert set(out.loc[out["split"] == "test", "source_split"]) == {"train", "test"}


def test_every_image_lands_in_exactly_one_split():
    source = table()
    for scheme in ("official", "pooled:0.8"):
        out = split_manifest(source, scheme, seed=3, val_fraction=0.2)
        assert len(out) == len(source)
        assert out["path"].is_unique
        assert set(out["split"]) == {"train", "val", "test"}
        groups = [set(out.loc[out["split"] == s, "path"]) for s in ("train", "val", "test")]
        assert not (groups[0] & groups[1])
        assert not (groups[0] & groups[2])
        assert not (groups[1] & groups[2])


def test_same_seed_same_split_whatever_the_row_order_and_other_seed_differs():
    source = table()
    first = split_manifest(source, "pooled:0.7", seed=7, val_fraction=0.1)
    shuffled = source.sample(frac=1, random_state=1)
    again = split_manifest(shuffled, "pooled:0.7", seed=7, val_fraction=0.1)
    assert again.set_index("path")["split"].sort_index().equals(
        first.set_index("path")["split"].sort_index())
    other = split_manifest(source, "pooled:0.7", seed=8, val_fraction=0.1)
    assert not other["split"].equals(first["split"])


def test_split_does_not_modify_its_input():
    source = table()
    before = source.copy()
    split_manifest(source, "official", seed=0, val_fraction=0.1)
    pd.testing.assert_frame_equal(source, before)


def test_every_class_keeps_a_train_image_even_when_tiny():
    out = split_manifest(table({"x": (1, 1), "y": (2, 1)}), "official", seed=0, val_fraction=0.5)
    assert per_class(out) == {("x", "test"): 1, ("x", "train"): 1,
                              ("y", "test"): 1, ("y", "train"): 1, ("y", "val"): 1}


def test_zero_val_fraction_gives_no_val():
    out = split_manifest(table(), "official", seed=0, val_fraction=0.0)
    assert "val" not in set(out["split"])


def test_a_source_val_split_is_kept_under_official():
    source = table()
    source.loc[source.index[:5], "source_split"] = "val"
    out = split_manifest(source, "official", seed=0, val_fraction=0.3)
    assert out["split"].tolist() == out["source_split"].tolist()


def test_official_needs_a_source_with_train_and_test():
    source = table().assign(source_split="")
    with pytest.raises(UserError, match=r"no official train/test split \(found: none\); use "
                                        r"--split pooled:R"):
        split_manifest(source, "official", seed=0, val_fraction=0.1)
    pooled = split_manifest(source, "pooled:0.5", seed=0, val_fraction=0.1)
    assert set(pooled["split"]) == {"train", "val", "test"}


def test_scheme_names_round_trip():
    assert parse_scheme("official") == SplitScheme("official")
    assert str(parse_scheme("pooled:0.7")) == "pooled:0.7"
    assert str(parse_scheme("pooled:0.90")) == "pooled:0.9"


@pytest.mark.parametrize("text", ["pooled:1", "pooled:0", "pooled:abc", "pooled:"])
def test_bad_pooled_ratio(text):
    with pytest.raises(UserError, match=rf"--split '{text}': the pooled ratio must be a number "
                                        "between 0 and 1"):
        parse_scheme(text)


def test_unknown_scheme():
    with pytest.raises(UserError, match=r"--split 'random' is unknown; valid: official, pooled"):
        parse_scheme("random")


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_val_fraction(fraction):
    with pytest.raises(UserError, match=rf"--val-fraction is {fraction}, but must be >= 0"):
        split_manifest(table(), "official", seed=0, val_fraction=fraction)
