"""Labelled image sets: the CSV format, and the two shared datasets read as such sets."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import SHARED_DATASETS
from lookalike import cli
from lookalike.model.labelled import (
    COLUMNS,
    LabelledSetError,
    grocery_store,
    image_folders,
    labelled_images,
    read_labelled_images,
    split_by_product,
)

GROCERY = SHARED_DATASETS / "grocery-store"
CLOTHING = SHARED_DATASETS / "clothing-small"


def test_csv_paths_are_relative_to_the_file_and_empty_labels_mean_unknown(tmp_path):
    folder = tmp_path / "sets"
    folder.mkdir()
    (folder / "val.csv").write_text(
        "image_uri,product_id,category,is_reference\n"
        "photos/a.jpg,p1,fruit,false\n"
        "/abs/b.jpg,,fruit,\n"
        "s3://bucket/c.jpg,p1,,TRUE\n"
    )
    frame = read_labelled_images(folder / "val.csv")
    assert frame["image_uri"].tolist() == [
        str(folder / "photos" / "a.jpg"),
        "/abs/b.jpg",
        "s3://bucket/c.jpg",
    ]
    assert frame["product_id"].tolist() == ["p1", None, "p1"]
    assert frame["category"].tolist() == ["fruit", "fruit", None]
    assert frame["is_reference"].tolist() == [False, False, True]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("product_id\np1\n", "no image_uri column"),
        ("image_uri,sku\na.jpg,1\n", r"unknown column\(s\) \['sku'\]"),
        ("image_uri,is_reference\na.jpg,maybe\n", "is_reference must be true or false"),
        ("image_uri\n", "no images"),
    ],
)
def test_a_bad_csv_is_refused_with_the_reason(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(LabelledSetError, match=message):
        read_labelled_images(tmp_path / "bad.csv")


def test_a_missing_csv_is_refused(tmp_path):
    with pytest.raises(LabelledSetError, match="cannot read labelled set"):
        read_labelled_images(tmp_path / "nope.csv")


@pytest.mark.skipif(not GROCERY.is_dir(), reason=f"shared dataset not present: {GROCERY}")
def test_grocery_store_splits_with_their_iconic_references():
    train = grocery_store(GROCERY, "train")
    photos, references = train[~train["is_reference"]], train[train["is_reference"]]
    assert len(photos) == 2640 and photos["product_id"].nunique() == 81
    # Every product's iconic image, whatever the split holds: the gallery is the catalogue.
    assert len(references) == 81 and set(references["product_id"]) == set(photos["product_id"])
    val = grocery_store(GROCERY, "val")
    assert (~val["is_reference"]).sum() == 296 and val["is_reference"].sum() == 81
    first = photos.iloc[0]
    assert (first["product_id"], first["category"]) == ("Golden-Delicious", "Apple")
    assert all(pd.io.common.file_exists(uri) for uri in train["image_uri"].head(5))
    assert grocery_store(GROCERY, "val", with_references=False)["is_reference"].sum() == 0
    with pytest.raises(LabelledSetError, match="no .*nope.txt"):
        grocery_store(GROCERY, "nope")


@pytest.mark.skipif(not CLOTHING.is_dir(), reason=f"shared dataset not present: {CLOTHING}")
def test_category_folders_as_a_labelled_set():
    test = image_folders(CLOTHING / "test")
    assert len(test) == 372 and test["category"].nunique() == 10
    assert test["product_id"].isna().all() and not test["is_reference"].any()


def test_command_writes_a_csv_that_reads_back(tmp_path, capsys):
    """Through `lookalike labelled`, the documented entry point of every evaluation tool."""
    for category in ("hat", "shoes"):
        (tmp_path / "photos" / category).mkdir(parents=True)
        (tmp_path / "photos" / category / "1.jpg").write_bytes(b"not read here")
    out = tmp_path / "set.csv"
    assert cli.main(["labelled", "folders", str(tmp_path / "photos"), "--out", str(out)]) == 0
    assert "2 images, 0 products, 2 categories" in capsys.readouterr().out
    assert read_labelled_images(out)["category"].tolist() == ["hat", "shoes"]
    assert cli.main(["labelled", "folders", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_split_by_product_holds_out_whole_products_reproducibly():
    rows = [(f"{p}_{i}.jpg", p, "fruit", False) for p in "abcdefghij" for i in range(3)]
    rows += [(f"{p}_iconic.jpg", p, "fruit", True) for p in "abcdefghij"]
    frame = labelled_images(pd.DataFrame(rows, columns=list(COLUMNS)))
    kept, held = split_by_product(frame, 0.2, seed=0)
    held_products = set(held["product_id"])
    assert len(held_products) == 2 and len(held) == 6
    # No product on both sides among the photos; every reference stays with the kept rows.
    assert not held_products & set(kept.loc[~kept["is_reference"], "product_id"])
    assert not held["is_reference"].any() and kept["is_reference"].sum() == 10
    assert len(kept) + len(held) == len(frame)
    # The same seed draws the same products whatever the rows' order; another seed others.
    shuffled = frame.sample(frac=1.0, random_state=1)
    assert set(split_by_product(shuffled, 0.2, seed=0)[1]["product_id"]) == held_products
    draws = {frozenset(split_by_product(frame, 0.2, seed=s)[1]["product_id"]) for s in range(5)}
    assert len(draws) > 1
    with pytest.raises(LabelledSetError, match="leaves no product"):
        split_by_product(frame, 0.01)
    with pytest.raises(ValueError, match="share"):
        split_by_product(frame, 1.0)
