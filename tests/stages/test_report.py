"""The duplicate-listings report: escaping of seller text, ordering, thumbnails, CSV, edge cases."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pandas as pd
import pytest
from markupsafe import escape
from PIL import Image

from lookalike.core.storage import Location
from lookalike.stages.report import MEMBER_COLUMNS, MISMATCH_COLUMNS
from lookalike.stages.report_page import ReportPaths, write_duplicate_report

HOSTILE_TITLE = '<script>alert(1)</script>&"x"'
MESSY_TITLE = 'Mug, blue, 12 oz "large"\nsecond line, with comma'
THUMB = "data:image/jpeg;base64,"
PLACEHOLDER = "image unavailable"
RUN_ID = "2026-11-23"


def _image(path: Path, size: tuple[int, int] = (64, 48), color: str = "red") -> str:
    Image.new("RGB", size, color).save(path, format="JPEG")
    return str(path)


def _row(
    cluster_id: str,
    sku_id: str,
    canonical_sku_id: str,
    image_uri: str,
    *,
    min_score: float = 1.0,
    title: str | None = "a title",
    evidence: str = "content_hash",
    category: str = "mugs",
    is_active: bool = True,
) -> dict[str, object]:
    return {
        "cluster_id": cluster_id,
        "sku_id": sku_id,
        "canonical_sku_id": canonical_sku_id,
        "category": category,
        "title": title,
        "image_uri": image_uri,
        "is_active": is_active,
        "evidence": evidence,
        "score": 1.0 if sku_id == canonical_sku_id else min_score,
        "phash_distance": 0 if sku_id == canonical_sku_id else 3,
        "min_score": min_score,
        "run_id": RUN_ID,
    }


@pytest.fixture
def members(tmp_path: Path) -> pd.DataFrame:
    """Three clusters given out of confidence order; canonicals sort last by sku_id on purpose."""
    img = tmp_path / "img"
    img.mkdir()
    (img / "broken.jpg").write_bytes(b"not a jpeg at all")
    rows = [
        _row(
            "c-low",
            "s-10",
            "s-19",
            _image(img / "10.jpg"),
            min_score=0.91,
            evidence="embedding",
            title=MESSY_TITLE,
            is_active=False,
        ),
        _row(
            "c-low",
            "s-19",
            "s-19",
            _image(img / "19.jpg"),
            min_score=0.91,
            evidence="embedding",
            title=None,
        ),
        _row("c-exact", "s-01", "s-09", _image(img / "01.jpg"), title=HOSTILE_TITLE),
        _row("c-exact", "s-09", "s-09", _image(img / "09.jpg")),
        _row("c-exact", "s-05", "s-09", str(img / "broken.jpg")),
        _row(
            "c-mid",
            "s-20",
            "s-29",
            _image(img / "20.jpg"),
            min_score=0.97,
            evidence="content_hash,embedding",
        ),
        _row(
            "c-mid",
            "s-29",
            "s-29",
            str(img / "missing.jpg"),
            min_score=0.97,
            evidence="content_hash,embedding",
            category="cups & mugs <b>",
        ),
    ]
    return pd.DataFrame(rows, columns=list(MEMBER_COLUMNS))


def _cards(page: str) -> dict[str, str]:
    """cluster_id -> the HTML of its card."""
    cards = page.split('<article class="cluster">')[1:]
    return {re.search(r'<span class="id">([^<]*)</span>', card).group(1): card for card in cards}


def _member_blocks(card: str) -> list[str]:
    return card.split('<li class="member')[1:]


def test_writes_every_file_and_returns_their_paths(members: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "reports" / RUN_ID
    paths = write_duplicate_report(members, out, run_id=RUN_ID)
    assert paths == ReportPaths(
        html=Location.of(out / "duplicates.html"),
        csv=Location.of(out / "duplicates.csv"),
        mismatches_csv=Location.of(out / "category_mismatches.csv"),
    )
    assert paths.html.is_file() and paths.csv.is_file()
    # No mismatch given: the section says so, and its CSV is a header.
    assert "No listing looks like it belongs to another category" in paths.html.read_text()
    assert paths.mismatches_csv.read_text() == ",".join(MISMATCH_COLUMNS) + "\r\n"
    # Only these files: no temp file left behind.
    assert sorted(p.name for p in out.iterdir()) == [
        "category_mismatches.csv",
        "duplicates.csv",
        "duplicates.html",
    ]


def test_seller_text_is_escaped_and_no_script_tag(members: pd.DataFrame, tmp_path: Path) -> None:
    page = write_duplicate_report(members, tmp_path, run_id=RUN_ID).html.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&#34;x&#34;" in page
    assert "<script" not in page.lower()
    assert "cups &amp; mugs &lt;b&gt;" in page
    assert "<b>" not in page


def test_run_id_is_escaped_too(members: pd.DataFrame, tmp_path: Path) -> None:
    page = write_duplicate_report(members, tmp_path, run_id="<i>r1</i>").html.read_text()
    assert "<title>Duplicate listings, run &lt;i&gt;r1&lt;/i&gt;</title>" in page
    assert "<i>" not in page


def test_every_cluster_and_sku_appears(members: pd.DataFrame, tmp_path: Path) -> None:
    page = write_duplicate_report(members, tmp_path, run_id=RUN_ID).html.read_text()
    cards = _cards(page)
    assert set(cards) == set(members["cluster_id"])
    for row in members.itertuples():
        assert f'<div class="sku">{row.sku_id}</div>' in cards[row.cluster_id]


def test_canonical_is_badged_and_first(members: pd.DataFrame, tmp_path: Path) -> None:
    page = write_duplicate_report(members, tmp_path, run_id=RUN_ID).html.read_text()
    for cluster_id, card in _cards(page).items():
        canonical = members.loc[members["cluster_id"] == cluster_id, "canonical_sku_id"].iloc[0]
        blocks = _member_blocks(card)
        badged = [b for b in blocks if '<span class="badge canonical">canonical</span>' in b]
        assert len(badged) == 1, cluster_id
        assert badged[0] is blocks[0], cluster_id
        assert f'<div class="sku">{canonical}</div>' in blocks[0]
        # The rest keep a stable order: by sku_id.
        rest = [re.search(r'<div class="sku">([^<]*)<', b).group(1) for b in blocks[1:]]
        assert rest == sorted(rest)


def test_clusters_ordered_by_min_score_then_cluster_id(tmp_path: Path) -> None:
    img = _image(tmp_path / "a.jpg")
    scores = {"c-b": 0.95, "c-a": 0.95, "c-top": 1.0, "c-low": 0.9, "c-mid": 0.97}
    rows = [
        _row(cid, f"{cid}-s{i}", f"{cid}-s0", img, min_score=score)
        for cid, score in scores.items()
        for i in range(2)
    ]
    page = write_duplicate_report(pd.DataFrame(rows), tmp_path / "out", run_id=RUN_ID)
    order = list(_cards(page.html.read_text()))
    assert order == ["c-top", "c-mid", "c-a", "c-b", "c-low"]
    assert "<strong>0.970</strong>" in page.html.read_text()


def test_unreadable_images_get_placeholder_others_render(
    members: pd.DataFrame, tmp_path: Path
) -> None:
    page = write_duplicate_report(members, tmp_path / "out", run_id=RUN_ID).html.read_text()
    cards = _cards(page)
    readable = [
        Path(uri).is_file() and not uri.endswith("broken.jpg") for uri in members["image_uri"]
    ]
    assert page.count(THUMB) == sum(readable) == 5
    assert page.count(PLACEHOLDER) == len(members) - sum(readable) == 2
    broken = next(b for b in _member_blocks(cards["c-exact"]) if '"sku">s-05<' in b)
    assert PLACEHOLDER in broken and THUMB not in broken
    missing = next(b for b in _member_blocks(cards["c-mid"]) if '"sku">s-29<' in b)
    assert PLACEHOLDER in missing and THUMB not in missing


def test_thumbnail_is_exif_transposed_jpeg_within_thumb_px(tmp_path: Path) -> None:
    # Stored landscape 200x100 with EXIF orientation 6: the camera was held upright, so the
    # merchandiser must see a portrait thumbnail.
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (200, 100), "blue")
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, format="JPEG", exif=exif.tobytes())
    png = tmp_path / "cutout.png"
    Image.new("RGBA", (30, 30), (0, 0, 0, 0)).save(png)
    rows = [_row("c1", "a", "a", str(path)), _row("c1", "b", "a", str(png))]
    page = write_duplicate_report(
        pd.DataFrame(rows), tmp_path / "out", run_id=RUN_ID, thumb_px=64
    ).html.read_text()
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(uris) == 2
    thumbs = [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]
    assert all(t.format == "JPEG" and t.mode == "RGB" for t in thumbs)
    assert thumbs[0].size == (32, 64)
    # Transparent cut-outs land on white, not black.
    assert min(thumbs[1].getpixel((15, 15))) > 240


def test_csv_round_trips_in_page_order(members: pd.DataFrame, tmp_path: Path) -> None:
    paths = write_duplicate_report(members, tmp_path, run_id=RUN_ID)
    numbers = ("is_active", "min_score", "score", "phash_distance")
    text_columns = [c for c in MEMBER_COLUMNS if c not in numbers]
    back = pd.read_csv(paths.csv, dtype={c: str for c in text_columns}, keep_default_na=False)
    assert list(back.columns) == list(MEMBER_COLUMNS)
    assert len(back) == len(members)
    assert MESSY_TITLE in set(back["title"])
    assert HOSTILE_TITLE in set(back["title"])
    assert list(dict.fromkeys(back["cluster_id"])) == ["c-exact", "c-mid", "c-low"]
    assert list(back["sku_id"]) == ["s-09", "s-01", "s-05", "s-29", "s-20", "s-19", "s-10"]
    expected = (
        members.assign(title=members["title"].fillna(""))
        .set_index("sku_id")
        .loc[back["sku_id"]]
        .reset_index()[list(MEMBER_COLUMNS)]
    )
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)


def test_max_clusters_truncates_page_not_csv(tmp_path: Path) -> None:
    img = _image(tmp_path / "a.jpg")
    rows = [
        _row(f"c{n}", f"c{n}-s{i}", f"c{n}-s0", img, min_score=1.0 - n / 100)
        for n in range(5)
        for i in range(3)
    ]
    paths = write_duplicate_report(
        pd.DataFrame(rows), tmp_path / "out", run_id=RUN_ID, max_clusters=2
    )
    page = paths.html.read_text()
    assert list(_cards(page)) == ["c0", "c1"]
    assert "3 more clusters (9 listings) are not shown" in page
    assert page.count(THUMB) == 6
    # The summary still counts the whole run.
    assert "<dt>Clusters</dt><dd>5</dd>" in page
    assert len(pd.read_csv(paths.csv)) == 15


def test_no_truncation_note_when_all_fit(members: pd.DataFrame, tmp_path: Path) -> None:
    page = write_duplicate_report(members, tmp_path, run_id=RUN_ID, max_clusters=3)
    assert "not shown" not in page.html.read_text()


def test_summary_counts_evidence_kinds_and_totals(members: pd.DataFrame, tmp_path: Path) -> None:
    page = write_duplicate_report(
        members, tmp_path, run_id=RUN_ID, totals={"skus_scanned": 1234, "images_rejected": 7}
    ).html.read_text()
    assert "<dt>Clusters</dt><dd>3</dd>" in page
    assert "<dt>Listings involved</dt><dd>7</dd>" in page
    # c-mid has both kinds and counts under each.
    assert "<dt>content_hash</dt><dd>2</dd>" in page
    assert "<dt>embedding</dt><dd>2</dd>" in page
    assert "<dt>skus_scanned</dt><dd>1234</dd>" in page
    assert "<dt>images_rejected</dt><dd>7</dd>" in page


@pytest.mark.parametrize("columns", [list(MEMBER_COLUMNS), []], ids=["with-columns", "bare"])
def test_empty_run(columns: list[str], tmp_path: Path) -> None:
    paths = write_duplicate_report(pd.DataFrame(columns=columns), tmp_path / "out", run_id=RUN_ID)
    page = paths.html.read_text()
    assert "No duplicate listings were found" in page
    assert "<dt>Clusters</dt><dd>0</dd>" in page
    assert page.rstrip().endswith("</html>")
    assert '<article class="cluster">' not in page
    assert paths.csv.read_text() == ",".join(MEMBER_COLUMNS) + "\r\n"


def test_rerun_replaces_previous_report(members: pd.DataFrame, tmp_path: Path) -> None:
    write_duplicate_report(members, tmp_path, run_id=RUN_ID)
    paths = write_duplicate_report(members.iloc[0:0], tmp_path, run_id=RUN_ID)
    assert "No duplicate listings were found" in paths.html.read_text()
    assert len(pd.read_csv(paths.csv)) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "category_mismatches.csv",
        "duplicates.csv",
        "duplicates.html",
    ]


def test_missing_column_is_named(members: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="canonical_sku_id"):
        write_duplicate_report(members.drop(columns="canonical_sku_id"), tmp_path, run_id=RUN_ID)


def test_titles_render_once_each(members: pd.DataFrame, tmp_path: Path) -> None:
    page = write_duplicate_report(members, tmp_path, run_id=RUN_ID).html.read_text()
    assert page.count(str(escape(MESSY_TITLE))) == 1
    assert page.count("no title") == 1


def _style_row(group_id: str, sku_id: str, image_uri: str, **values) -> dict[str, object]:
    row = {
        "group_id": group_id,
        "category": "dresses",
        "sku_id": sku_id,
        "is_representative": False,
        "representative_sku_id": "",
        "group_size": 2,
        "cohesion": 0.8,
        "similarity": 0.9,
        "title": "a dress",
        "image_uri": image_uri,
        "run_id": RUN_ID,
    }
    return row | values


def test_style_groups_largest_then_most_cohesive_representative_first(tmp_path: Path) -> None:
    red = _image(tmp_path / "red.jpg")
    rows = [
        # A pair, less cohesive than the other pair; a group of three, shown first.
        _style_row("g-pair-loose", "p1", red, cohesion=0.7),
        _style_row("g-pair-loose", "p2", red, cohesion=0.7, is_representative=True),
        _style_row("g-pair-tight", "q1", red, cohesion=0.95, title=HOSTILE_TITLE),
        _style_row("g-pair-tight", "q2", red, cohesion=0.95, is_representative=True),
    ] + [
        _style_row("g-three", f"t{i}", red, group_size=3, is_representative=i == 2,
                   similarity=0.9 - i / 100)
        for i in range(3)
    ]  # fmt: skip
    paths = write_duplicate_report(
        pd.DataFrame(columns=MEMBER_COLUMNS),
        tmp_path / "out",
        run_id=RUN_ID,
        style_groups=pd.DataFrame(rows),
    )
    page = paths.html.read_text()
    section = page[page.index('id="style-groups"') :]
    order = [section.index(g) for g in ("g-three", "g-pair-tight", "g-pair-loose")]
    assert order == sorted(order)
    three = section[section.index("g-three") : section.index("g-pair-tight")]
    skus = re.findall(r'<div class="sku">(t\d)</div>', three)
    assert skus == ["t2", "t0", "t1"]  # the representative, then by similarity
    assert three.count("representative</span>") == 1
    assert three.count(THUMB) == 3
    assert "<script>alert" not in page and str(escape(HOSTILE_TITLE)) in section
    exported = pd.read_csv(paths.style_groups_csv)
    assert exported["sku_id"].tolist() == ["t2", "t0", "t1", "q2", "q1", "p2", "p1"]


def test_no_style_groups_says_so_and_writes_no_export(members, tmp_path: Path) -> None:
    paths = write_duplicate_report(members, tmp_path, run_id=RUN_ID)
    assert "No same-style groups in this run." in paths.html.read_text()
    assert not paths.style_groups_csv.exists()
