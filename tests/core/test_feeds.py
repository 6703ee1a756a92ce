"""Product feeds (Google Merchant, Shopify) read into the raw catalog table, every row kept."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.core.feeds import (
    FEED_COLUMNS,
    FEED_FORMATS,
    FEED_SCHEMA,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    FeedError,
    detect_format,
    read_feed,
    read_feed_with_report,
)

HOSTILE_TITLE = 'She said "hi", then\nleft; <b>bold</b> & co'
SCRIPT = "<script>alert('x')</script> & \"quotes\""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


# -- Google Merchant Center: TSV -----------------------------------------------------------------

GOOGLE_TSV = (
    "id\ttitle\tlink\timage_link\tadditional_image_link\tavailability\tprice\t"
    "product_type\tgoogle_product_category\titem_group_id\n"
    "A1\tLinen dress\thttps://s/a1\thttps://img/a1.jpg\thttps://img/a1b.jpg,https://img/a1c.jpg\t"
    "in_stock\t49.00 EUR\tWomen > Dresses > Maxi\t2271\tG1\n"
    "A2\t  Linen dress blue  \thttps://s/a2\thttps://img/a2.jpg\t\tout of stock\t49.00 EUR\t"
    "Women > Dresses > Maxi\t\tG1\n"
    'B1\t"Best" boots\thttps://s/b1\thttps://img/b1.jpg\t\tpreorder\t99 EUR\t\t187\t\n'
    "C1\tScarf\thttps://s/c1\thttps://img/c1.jpg\t\tbackorder\t9 EUR\t\t"
    "Apparel & Accessories > Clothing Accessories > Scarves & Shawls\t\n"
    "D1\tGone\thttps://s/d1\thttps://img/d1.jpg\t\tdiscontinued\t1 EUR\tMisc\t\t\n"
    "\tNo id\thttps://s/x\thttps://img/x.jpg\t\tin_stock\t1 EUR\tMisc\t\t\n"
    "E1\tNo image\thttps://s/e1\t\t\tin_stock\t1 EUR\tMisc\t\t\n"
)


def test_google_tsv_maps_every_row(tmp_path):
    path = _write(tmp_path / "feed.tsv", GOOGLE_TSV)
    assert detect_format(path) == "google-merchant"
    feed = read_feed_with_report(path)
    table = feed.table
    assert table.schema == FEED_SCHEMA
    assert table.column_names == list(FEED_COLUMNS)
    assert feed.format == "google-merchant"
    assert feed.input_rows == table.num_rows == 7
    assert _column(table, "sku_id") == ["A1", "A2", "B1", "C1", "D1", None, "E1"]
    assert _column(table, "title") == [
        "Linen dress",
        "Linen dress blue",
        '"Best" boots',  # a TSV is read without quote handling: the quotes are the title's
        "Scarf",
        "Gone",
        "No id",
        "No image",
    ]
    assert _column(table, "category") == [
        "Women > Dresses > Maxi",
        "Women > Dresses > Maxi",
        "187",  # no product_type: the taxonomy id, as text
        "Apparel & Accessories > Clothing Accessories > Scarves & Shawls",
        "Misc",
        "Misc",
        "Misc",
    ]
    assert _column(table, "category_path") == [
        "Women > Dresses > Maxi",
        "Women > Dresses > Maxi",
        None,
        None,
        "Misc",
        "Misc",
        "Misc",
    ]
    assert _column(table, "is_active") == [
        "true",
        "false",
        "true",
        "true",
        "discontinued",  # verbatim: ingest rejects it as invalid_is_active
        "true",
        "true",
    ]
    assert _column(table, "image_uri")[5:] == ["https://img/x.jpg", None]
    assert _column(table, "additional_image_uris") == [
        ["https://img/a1b.jpg", "https://img/a1c.jpg"],
        [],
        [],
        [],
        [],
        [],
        [],
    ]
    assert _column(table, "item_group_id") == ["G1", "G1", None, None, None, None, None]
    assert _column(table, "updated_at") == [None] * 7
    assert feed.ignored_columns == ("link", "price")
    assert feed.folded_rows == 0


def test_google_tsv_with_g_prefixed_headers_reads_the_same(tmp_path):
    header, body = GOOGLE_TSV.split("\n", 1)
    prefixed = "\t".join(f"g:{name}" for name in header.split("\t"))
    plain = read_feed(_write(tmp_path / "plain.tsv", GOOGLE_TSV))
    path = _write(tmp_path / "prefixed.tsv", prefixed + "\n" + body)
    assert detect_format(path) == "google-merchant"
    assert read_feed(path).equals(plain)


def test_google_tsv_updated_at_and_repeated_columns(tmp_path):
    path = _write(
        tmp_path / "feed.txt",
        "ID\tImage Link\tadditional_image_link\tadditional_image_link\tproduct_type\t"
        "product_type\tavailability\tupdated_at\n"
        "1\thttps://i/1.jpg\thttps://i/1b.jpg\thttps://i/1c.jpg , https://i/1d.jpg\tShoes > Boots\t"
        "Sale\tIN STOCK\t2024-05-01T10:00:00Z\n",
    )
    table = read_feed(path, "google-merchant")
    row = table.to_pylist()[0]
    assert row["sku_id"] == "1"
    assert row["image_uri"] == "https://i/1.jpg"
    assert row["additional_image_uris"] == [
        "https://i/1b.jpg",
        "https://i/1c.jpg",
        "https://i/1d.jpg",
    ]
    assert row["category"] == row["category_path"] == "Shoes > Boots"  # the first product_type
    assert row["is_active"] == "true"
    assert row["updated_at"] == "2024-05-01T10:00:00Z"


def test_google_csv_with_hostile_quoted_titles(tmp_path):
    path = tmp_path / "feed.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "title", "image_link", "availability", "product_type"])
        writer.writerow(["1", HOSTILE_TITLE, "https://i/1.jpg", "in_stock", "Kitchen, Dining"])
        writer.writerow(["2", "Ünïcødé ✓ 日本", "https://i/2.jpg", "out_of_stock", "Kitchen"])
    assert detect_format(path) == "google-merchant"
    table = read_feed(path)
    assert _column(table, "title") == [HOSTILE_TITLE, "Ünïcødé ✓ 日本"]
    assert _column(table, "category") == ["Kitchen, Dining", "Kitchen"]  # not split on commas
    assert _column(table, "is_active") == ["true", "false"]


def test_quoted_tsv_is_unquoted(tmp_path):
    path = _write(
        tmp_path / "feed.tsv",
        '"id"\t"title"\t"image_link"\n"1"\t"Tab\tand ""quote"""\t"https://i/1.jpg"\n',
    )
    assert read_feed(path).to_pylist()[0]["title"] == 'Tab\tand "quote"'


def test_google_missing_required_column_names_it(tmp_path):
    path = _write(tmp_path / "feed.tsv", "id\ttitle\tlink\n1\tDress\thttps://s/1\n")
    with pytest.raises(FeedError) as e:
        read_feed(path, "google-merchant")
    message = str(e.value)
    assert "image_link" in message
    assert "google-merchant" in message
    assert str(path) in message
    assert "found: id, title, link" in message
    assert isinstance(e.value, ValueError)


def test_google_row_longer_than_the_header_is_refused_with_its_line(tmp_path):
    path = _write(tmp_path / "feed.tsv", "id\timage_link\n1\thttps://i/1\n2\thttps://i/2\textra\n")
    with pytest.raises(FeedError, match="line 3"):
        read_feed(path)


# -- Google Merchant Center: XML -----------------------------------------------------------------

RSS = f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:g="http://base.google.com/ns/1.0">
  <channel>
    <title>Shop</title>
    <link>https://shop</link>
    <item>
      <g:id>R1</g:id>
      <title><![CDATA[{SCRIPT}]]></title>
      <link>https://shop/r1</link>
      <g:image_link> https://img/r1.jpg </g:image_link>
      <g:additional_image_link>https://img/r1b.jpg</g:additional_image_link>
      <g:additional_image_link>https://img/r1,c.jpg</g:additional_image_link>
      <g:availability>in stock</g:availability>
      <g:product_type>Home &gt; Kitchen &gt; Mugs</g:product_type>
      <g:product_type>Sale</g:product_type>
      <g:google_product_category>2169</g:google_product_category>
      <g:item_group_id>MUGS</g:item_group_id>
      <g:shipping><g:country>DE</g:country><g:price>4.95 EUR</g:price></g:shipping>
      <g:price>12.00 EUR</g:price>
    </item>
    <item>
      <g:id>R2</g:id>
      <g:title>&lt;b&gt;Escaped&lt;/b&gt; &amp; kept</g:title>
      <g:image_link>https://img/r2.jpg</g:image_link>
      <g:availability>out_of_stock</g:availability>
      <g:google_product_category>Home &amp; Garden &gt; Kitchen</g:google_product_category>
    </item>
    <item>
      <title>No id here</title>
      <g:image_link>https://img/r3.jpg</g:image_link>
      <g:availability>limited</g:availability>
    </item>
  </channel>
</rss>
"""


def test_google_rss(tmp_path):
    path = _write(tmp_path / "feed.xml", RSS)
    assert detect_format(path) == "google-merchant"
    feed = read_feed_with_report(path)
    table = feed.table
    assert table.schema == FEED_SCHEMA
    assert feed.input_rows == 3
    assert _column(table, "sku_id") == ["R1", "R2", None]
    assert _column(table, "title") == [SCRIPT, "<b>Escaped</b> & kept", "No id here"]
    assert _column(table, "image_uri") == [
        "https://img/r1.jpg",
        "https://img/r2.jpg",
        "https://img/r3.jpg",
    ]
    assert _column(table, "additional_image_uris") == [
        ["https://img/r1b.jpg", "https://img/r1,c.jpg"],  # elements, not split on commas
        [],
        [],
    ]
    assert _column(table, "category") == ["Home > Kitchen > Mugs", "Home & Garden > Kitchen", None]
    assert _column(table, "category_path") == ["Home > Kitchen > Mugs", None, None]
    assert _column(table, "is_active") == ["true", "false", "limited"]
    assert _column(table, "item_group_id") == ["MUGS", None, None]
    assert set(feed.ignored_columns) == {"link", "shipping", "price"}


ATOM = """<?xml version="1.0"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:g="http://base.google.com/ns/1.0">
  <title>Shop</title>
  <entry>
    <id>https://shop/entries/1</id>
    <g:id>AT1</g:id>
    <title>Wool coat</title>
    <link href="https://shop/at1"/>
    <g:image_link>https://img/at1.jpg</g:image_link>
    <g:availability>backorder</g:availability>
    <g:product_type>Men &gt; Coats</g:product_type>
  </entry>
  <entry>
    <g:id>AT2</g:id>
    <id>https://shop/entries/2</id>
    <g:title>Rain coat</g:title>
    <g:image_link>https://img/at2.jpg</g:image_link>
    <g:availability>out of stock</g:availability>
    <g:google_product_category>5598</g:google_product_category>
  </entry>
</feed>
"""


def test_google_atom(tmp_path):
    path = _write(tmp_path / "feed.atom", ATOM)
    assert detect_format(path) == "google-merchant"
    table = read_feed(path)
    assert table.to_pylist() == [
        {
            "sku_id": "AT1",  # g:id wins over the entry's Atom id, in either order
            "category": "Men > Coats",
            "image_uri": "https://img/at1.jpg",
            "is_active": "true",
            "title": "Wool coat",
            "updated_at": None,
            "category_path": "Men > Coats",
            "item_group_id": None,
            "additional_image_uris": [],
        },
        {
            "sku_id": "AT2",
            "category": "5598",
            "image_uri": "https://img/at2.jpg",
            "is_active": "false",
            "title": "Rain coat",
            "updated_at": None,
            "category_path": None,
            "item_group_id": None,
            "additional_image_uris": [],
        },
    ]


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<rss xmlns:g="http://base.google.com/ns/1.0"><channel><item>
<g:id>1</g:id><title>&lol9;</title><g:image_link>https://i/1.jpg</g:image_link>
</item></channel></rss>
"""


def test_entity_declarations_are_refused_unexpanded(tmp_path):
    path = _write(tmp_path / "lolz.xml", BILLION_LAUGHS)
    assert detect_format(path) == "google-merchant"
    started = time.perf_counter()
    with pytest.raises(FeedError, match="DOCTYPE") as e:
        read_feed(path)
    assert time.perf_counter() - started < 1
    assert "lol" * 10 not in str(e.value)


def test_external_entities_are_refused(tmp_path):
    secret = _write(tmp_path / "secret.txt", "TOP-SECRET")
    path = _write(
        tmp_path / "xxe.xml",
        f'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]>\n'
        '<rss xmlns:g="http://base.google.com/ns/1.0"><channel><item><g:id>&x;</g:id>'
        "<g:image_link>https://i/1.jpg</g:image_link></item></channel></rss>\n",
    )
    with pytest.raises(FeedError) as e:
        read_feed(path, "google-merchant")
    assert "TOP-SECRET" not in str(e.value)


def test_undeclared_entity_and_broken_xml_are_feed_errors(tmp_path):
    undeclared = _write(
        tmp_path / "a.xml",
        '<rss xmlns:g="http://base.google.com/ns/1.0"><channel><item><g:id>&x;</g:id>'
        "</item></channel></rss>",
    )
    with pytest.raises(FeedError, match="not well-formed"):
        read_feed(undeclared)
    broken = _write(
        tmp_path / "b.xml", '<rss xmlns:g="http://base.google.com/ns/1.0"><channel><item>'
    )
    with pytest.raises(FeedError, match="not well-formed"):
        read_feed(broken)


def test_xml_missing_required_element_names_it(tmp_path):
    path = _write(
        tmp_path / "feed.xml",
        '<rss xmlns:g="http://base.google.com/ns/1.0"><channel><item><g:id>1</g:id>'
        "<title>T</title></item></channel></rss>",
    )
    with pytest.raises(FeedError, match="image_link") as e:
        read_feed(path)
    assert "found: id, title" in str(e.value)


def test_an_empty_xml_feed_is_an_empty_table(tmp_path):
    path = _write(
        tmp_path / "feed.xml", '<rss xmlns:g="http://base.google.com/ns/1.0"><channel/></rss>'
    )
    feed = read_feed_with_report(path)
    assert feed.table.num_rows == 0
    assert feed.table.schema == FEED_SCHEMA
    assert feed.notes


# -- Shopify ---------------------------------------------------------------------------------------

SHOPIFY_HEADER = [
    "Handle",
    "Title",
    "Body (HTML)",
    "Vendor",
    "Product Category",
    "Type",
    "Tags",
    "Published",
    "Option1 Name",
    "Option1 Value",
    "Option2 Name",
    "Option2 Value",
    "Variant SKU",
    "Variant Price",
    "Image Src",
    "Image Position",
    "Variant Image",
    "Status",
]


def _shopify_rows() -> list[dict[str, str]]:
    dress = "Apparel & Accessories > Clothing > Dresses"
    return [
        # A dress: 3 variants, 3 images (2 on image-only rows), one variant with its own image.
        dict(
            Handle="linen-dress",
            Title="Linen dress",
            **{"Body (HTML)": "<p>Soft, light</p>"},
            Vendor="Acme",
            **{"Product Category": dress},
            Type="Dresses",
            Published="TRUE",
            **{
                "Option1 Name": "Color",
                "Option1 Value": "Blue",
                "Option2 Name": "Size",
                "Option2 Value": "S",
                "Variant SKU": "LD-BL-S",
                "Variant Price": "49.00",
                "Image Src": "https://cdn/ld-1.jpg",
                "Image Position": "1",
            },
            Status="active",
        ),
        dict(
            Handle="linen-dress",
            **{
                "Option1 Value": "Blue",
                "Option2 Value": "M",
                "Variant SKU": "LD-BL-M",
                "Variant Price": "49.00",
                "Image Src": "https://cdn/ld-2.jpg",
                "Image Position": "2",
            },
        ),
        dict(
            Handle="linen-dress",
            **{
                "Option1 Value": "Red",
                "Option2 Value": "S",
                "Variant SKU": "LD-RD-S",
                "Variant Price": "49.00",
                "Variant Image": "https://cdn/ld-red.jpg",
            },
        ),
        dict(
            Handle="linen-dress", **{"Image Src": "https://cdn/ld-red.jpg", "Image Position": "3"}
        ),
        dict(Handle="linen-dress", **{"Image Src": "https://cdn/ld-4.jpg", "Image Position": "4"}),
        # A single-variant product: Shopify's "Default Title" option, no Type.
        dict(
            Handle="wool-scarf",
            Title=HOSTILE_TITLE,
            **{"Product Category": "Scarves"},
            Published="TRUE",
            **{
                "Option1 Name": "Title",
                "Option1 Value": "Default Title",
                "Variant SKU": "WS-1",
                "Variant Price": "19.00",
                "Image Src": "https://cdn/ws.jpg",
                "Image Position": "1",
            },
            Status="active",
        ),
        # A draft product without a SKU: the Handle is its id.
        dict(
            Handle="draft-hat",
            Title="Hat",
            Type="Hats",
            Published="FALSE",
            **{
                "Option1 Name": "Title",
                "Option1 Value": "Default Title",
                "Variant Price": "5.00",
                "Image Src": "https://cdn/hat.jpg",
            },
            Status="draft",
        ),
    ]


def _write_shopify(path: Path, rows: list[dict[str, str]], header=SHOPIFY_HEADER) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_shopify_export_one_row_per_variant(tmp_path):
    path = _write_shopify(tmp_path / "products_export.csv", _shopify_rows())
    assert detect_format(path) == "shopify"
    feed = read_feed_with_report(path)
    table = feed.table
    assert table.schema == FEED_SCHEMA
    assert feed.format == "shopify"
    assert feed.input_rows == 7
    assert feed.folded_rows == 2
    assert table.num_rows == 5 == feed.input_rows - feed.folded_rows
    assert any("2 image-only row(s) folded" in note for note in feed.notes)
    assert _column(table, "sku_id") == ["LD-BL-S", "LD-BL-M", "LD-RD-S", "WS-1", "draft-hat"]
    assert _column(table, "item_group_id") == [
        "linen-dress",
        "linen-dress",
        "linen-dress",
        "wool-scarf",
        "draft-hat",
    ]
    assert _column(table, "title") == [
        "Linen dress - Blue - S",
        "Linen dress - Blue - M",
        "Linen dress - Red - S",
        HOSTILE_TITLE,
        "Hat",
    ]
    assert _column(table, "image_uri") == [
        "https://cdn/ld-1.jpg",
        "https://cdn/ld-1.jpg",  # no Variant Image: the product's first, not its row's image
        "https://cdn/ld-red.jpg",
        "https://cdn/ws.jpg",
        "https://cdn/hat.jpg",
    ]
    assert _column(table, "additional_image_uris") == [
        ["https://cdn/ld-2.jpg", "https://cdn/ld-red.jpg", "https://cdn/ld-4.jpg"],
        ["https://cdn/ld-2.jpg", "https://cdn/ld-red.jpg", "https://cdn/ld-4.jpg"],
        ["https://cdn/ld-1.jpg", "https://cdn/ld-2.jpg", "https://cdn/ld-4.jpg"],
        [],
        [],
    ]
    assert _column(table, "category") == ["Dresses", "Dresses", "Dresses", "Scarves", "Hats"]
    dress = "Apparel & Accessories > Clothing > Dresses"
    assert _column(table, "category_path") == [dress, dress, dress, None, "Hats"]
    assert _column(table, "is_active") == ["true", "true", "true", "true", "false"]
    assert _column(table, "updated_at") == [None] * 5
    assert set(feed.ignored_columns) == {
        "Body (HTML)",
        "Vendor",
        "Tags",
        "Option1 Name",
        "Option2 Name",
    }


def test_shopify_without_status_uses_published_and_keeps_sku_less_variants(tmp_path):
    rows = _shopify_rows()
    rows.append({"Handle": "draft-hat", "Option1 Value": "Large", "Variant Price": "6.00"})
    header = [h for h in SHOPIFY_HEADER if h != "Status"]
    feed = read_feed_with_report(_write_shopify(tmp_path / "export.csv", rows, header))
    table = feed.table
    assert table.num_rows == 6
    assert _column(table, "is_active") == ["true"] * 4 + ["false", "false"]
    # The hat's second variant has no SKU: kept, with a null id ingest rejects, and a note.
    assert _column(table, "sku_id")[-2:] == ["draft-hat", None]
    assert _column(table, "title")[-1] == "Hat - Large"
    assert any("no Variant SKU" in note for note in feed.notes)


def test_shopify_status_words(tmp_path):
    rows = [
        {"Handle": h, "Title": h, "Variant SKU": h, "Image Src": f"https://c/{h}.jpg", "Status": s}
        for h, s in (("a", "Active"), ("b", "archived"), ("c", "paused"), ("d", ""))
    ]
    table = read_feed(_write_shopify(tmp_path / "export.csv", rows))
    assert _column(table, "is_active") == ["true", "false", "paused", None]


def test_shopify_missing_required_column_names_it(tmp_path):
    header = ["Handle", "Title", "Variant SKU", "Status"]
    path = _write_shopify(tmp_path / "export.csv", [{"Handle": "a", "Variant SKU": "a"}], header)
    assert detect_format(path) == "shopify"
    with pytest.raises(FeedError) as e:
        read_feed(path)
    message = str(e.value)
    assert "Image Src" in message and "shopify" in message and str(path) in message
    assert "found: Handle, Title, Variant SKU, Status" in message


# -- the catalog's own formats -------------------------------------------------------------------


def test_catalog_csv_passes_through(tmp_path):
    path = tmp_path / "catalog.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sku_id", "category", "image_uri", "is_active", "title", "colour"])
        writer.writerow([" S1", "dresses", "images/s1.jpg", "yes", HOSTILE_TITLE, "red"])
        writer.writerow(["", "dresses", "", "0", "", "blue"])
    assert detect_format(path) == "csv"
    feed = read_feed_with_report(path)
    assert feed.table.schema == FEED_SCHEMA
    assert feed.table.to_pylist() == [
        {
            "sku_id": " S1",  # as sent: ingest trims ids
            "category": "dresses",
            "image_uri": "images/s1.jpg",
            "is_active": "yes",
            "title": HOSTILE_TITLE,
            "updated_at": None,
            "category_path": None,
            "item_group_id": None,
            "additional_image_uris": [],
        },
        {
            "sku_id": None,
            "category": "dresses",
            "image_uri": None,
            "is_active": "0",
            "title": None,
            "updated_at": None,
            "category_path": None,
            "item_group_id": None,
            "additional_image_uris": [],
        },
    ]
    assert feed.ignored_columns == ("colour",)


def test_catalog_csv_missing_required_column(tmp_path):
    path = _write(tmp_path / "catalog.csv", "sku_id,category,image_uri\n1,a,b\n")
    with pytest.raises(FeedError, match="is_active"):
        read_feed(path)


def test_catalog_parquet_passes_through(tmp_path):
    path = tmp_path / "catalog.parquet"
    pq.write_table(
        pa.table(
            {
                "sku_id": ["P1", "P2"],
                "category": ["bags", "bags"],
                "image_uri": ["images/p1.jpg", None],
                "is_active": [True, False],
                "updated_at": pa.array([1714557600_000_000_000, None], pa.timestamp("ns", "UTC")),
                "item_group_id": ["G", None],
            }
        ),
        path,
    )
    assert detect_format(path) == "parquet"
    assert detect_format(tmp_path) == "parquet"
    table = read_feed(path)
    assert table.schema == FEED_SCHEMA
    assert _column(table, "sku_id") == ["P1", "P2"]
    assert _column(table, "is_active") == ["true", "false"]
    assert _column(table, "updated_at") == ["2024-05-01 10:00:00.000000Z", None]
    assert _column(table, "item_group_id") == ["G", None]
    assert _column(table, "title") == [None, None]


# -- detection, errors, scale --------------------------------------------------------------------


def test_formats_and_errors(tmp_path):
    assert FEED_FORMATS == ("google-merchant", "shopify", "csv", "parquet")
    with pytest.raises(FeedError, match="not found"):
        read_feed(tmp_path / "absent.tsv")
    path = _write(tmp_path / "feed.tsv", GOOGLE_TSV)
    with pytest.raises(FeedError, match="unknown feed format"):
        read_feed(path, "excel")
    with pytest.raises(FeedError, match="empty"):
        read_feed(_write(tmp_path / "empty.csv", ""))
    with pytest.raises(FeedError, match="XML"):
        detect_format(_write(tmp_path / "other.xml", "<catalog><p/></catalog>"))
    with pytest.raises(FeedError, match="XML"):
        read_feed(_write(tmp_path / "feed.xml", RSS), "shopify")


def test_columns_agree_with_the_ingest_stage():
    ingest = pytest.importorskip("lookalike.stages.ingest")
    assert ingest.REQUIRED_COLUMNS == REQUIRED_COLUMNS
    assert ingest.OPTIONAL_COLUMNS == OPTIONAL_COLUMNS


def test_a_large_tsv_reads_in_seconds(tmp_path):
    n = 200_000
    path = tmp_path / "big.tsv"
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\ttitle\timage_link\tadditional_image_link\tavailability\tproduct_type\n")
        for i in range(n):
            f.write(
                f"S{i}\tProduct {i}\thttps://img/{i}.jpg\thttps://img/{i}b.jpg,https://img/{i}c.jpg"
                f"\t{'in_stock' if i % 3 else 'out_of_stock'}\tCat{i % 50} > Sub\n"
            )
    started = time.perf_counter()
    table = read_feed(path)
    elapsed = time.perf_counter() - started
    assert table.num_rows == n
    assert table.column("sku_id")[n - 1].as_py() == f"S{n - 1}"
    assert table.column("additional_image_uris")[7].as_py() == [
        "https://img/7b.jpg",
        "https://img/7c.jpg",
    ]
    assert elapsed < 5, elapsed


def test_a_large_rss_streams(tmp_path):
    n = 50_000
    path = tmp_path / "big.xml"
    with open(path, "w", encoding="utf-8") as f:
        f.write('<rss version="2.0" xmlns:g="http://base.google.com/ns/1.0"><channel>\n')
        for i in range(n):
            f.write(
                f"<item><g:id>S{i}</g:id><title>P {i}</title>"
                f"<g:image_link>https://img/{i}.jpg</g:image_link>"
                f"<g:availability>in_stock</g:availability></item>\n"
            )
        f.write("</channel></rss>\n")
    table = read_feed(path)
    assert table.num_rows == n
    assert table.column("sku_id")[n - 1].as_py() == f"S{n - 1}"


def test_words_that_look_like_nulls_are_values(tmp_path):
    path = _write(
        tmp_path / "feed.tsv",
        "id\ttitle\timage_link\tavailability\nNA\tnull\thttps://i/na.jpg\tN/A\n",
    )
    row = read_feed(path).to_pylist()[0]
    assert (row["sku_id"], row["title"], row["is_active"]) == ("NA", "null", "N/A")


def test_other_namespaces_are_not_taken_for_google_attributes(tmp_path):
    path = _write(
        tmp_path / "feed.xml",
        '<rss xmlns:g="http://base.google.com/ns/1.0" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        "<channel><item><dc:title>Not this</dc:title><g:id>1</g:id>"
        "<g:image_link>https://i/1.jpg</g:image_link></item></channel></rss>",
    )
    feed = read_feed_with_report(path)
    assert feed.table.column("title").to_pylist() == [None]
    assert feed.ignored_columns == ("{http://purl.org/dc/elements/1.1/}title",)


def test_a_feed_not_in_utf8_is_a_feed_error(tmp_path):
    path = tmp_path / "feed.tsv"
    path.write_bytes("id\ttitle\timage_link\n1\tRöck\thttps://i/1.jpg\n".encode("latin-1"))
    with pytest.raises(FeedError, match="UTF"):
        read_feed(path)
    short = tmp_path / "short.tsv"
    short.write_bytes("id\ttitle\timage_link\n1\tRöck\n2\tx\ty\n".encode("latin-1"))
    with pytest.raises(FeedError, match="UTF"):
        read_feed(short)


def test_short_rows_are_padded_not_dropped(tmp_path):
    path = _write(
        tmp_path / "feed.tsv",
        "id\timage_link\ttitle\tavailability\n1\thttps://i/1.jpg\n2\thttps://i/2.jpg\tT\tin_stock\n",
    )
    table = read_feed(path)
    assert _column(table, "sku_id") == ["1", "2"]
    assert _column(table, "title") == [None, "T"]
