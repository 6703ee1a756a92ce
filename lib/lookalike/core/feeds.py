"""Read a shop's product feed as it is: Google Merchant Center, a Shopify export, or the catalog.

``read_feed(path, fmt)`` turns a feed file into the raw catalog table the ingest stage validates:
one row per product (per variant for Shopify), every value a string (or null), nothing parsed
or judged. A row with no id or no image is *kept*, with a null there, so that ingest rejects it
with its reason (``missing_sku_id``, ``missing_image_uri``) instead of it vanishing here. Only a
file that cannot be read as a whole raises: ``FeedError`` (a ``ValueError``), whose message names
the format, the file, what is missing and the columns found.

``read_feed_with_report(path, fmt)`` returns a ``Feed``: the same table plus what the mapping did
(the format read, input rows, Shopify rows folded into their product, the columns it ignored,
notes). ``detect_format(path)`` says which reader ``fmt="auto"`` picks.

The table (``FEED_COLUMNS``, in this order)
-------------------------------------------

=======================  ================  ==============================================
column                   type              meaning
=======================  ================  ==============================================
sku_id                   string            the id ingest keys on
category                 string            the shard: similar items stay within one
image_uri                string            the main photo
is_active                string            "true" / "false", or the feed's own word as sent
title                    string            shown in reports and the review app
updated_at               string            as sent (ingest parses it)
category_path            string            "Women > Dresses > Maxi"
item_group_id            string            the product a variant belongs to
additional_image_uris    list<string>      the other photos, in feed order; [] when none
=======================  ================  ==============================================

Google Merchant Center (``google-merchant``)
--------------------------------------------

TSV or CSV (the delimiter is read from the header line: tab, comma, pipe, tilde or semicolon),
or XML: RSS 2.0 (``<rss><channel><item>``) or Atom (``<feed><entry>``) with the
``http://base.google.com/ns/1.0`` namespace. Attribute names are matched without their ``g:``
prefix, case-insensitively, with spaces read as underscores (``g:id``, ``id``, ``ID``;
``image link`` is ``image_link``); in XML a ``g:`` element wins over an un-prefixed one of the same
name (an Atom ``<id>`` is the entry's URL, ``<g:id>`` the product's id); elements of any other
namespace (``<dc:title>``) are not Google attributes and are listed as ignored.

=========================  =====================================================================
feed attribute             becomes
=========================  =====================================================================
id (required)              sku_id
image_link (required)      image_uri
title                      title
additional_image_link      additional_image_uris: comma-separated in TSV/CSV (and repeated
                           columns), repeated elements in XML
product_type               category_path (the first, if repeated); and category
google_product_category    category when a row has no product_type; kept as text, whether a
                           taxonomy id ("2271") or a path ("Apparel & Accessories > ...")
availability               is_active: in_stock / in stock, preorder, backorder -> "true";
                           out_of_stock / out of stock -> "false"; anything else as sent, so
                           ingest rejects it as invalid_is_active
item_group_id              item_group_id
updated_at                 updated_at (null when the feed has no such column)
=========================  =====================================================================

Every other attribute (price, link, brand, shipping, ...) is ignored and listed in
``Feed.ignored_columns``. Values are stripped of surrounding whitespace; an empty value is null,
and only an empty one ("NA", "null", "N/A" are values, in every format).
``product_type`` is not split on commas ("Shoes, Boots" is one label): a second product type comes
as a second column or element, and only the first is used.

A TSV is read without quote handling (Merchant Center's own exports do not quote, and a title may
begin with a quote) unless the file quotes its fields (some field of the first 64 KiB, or the
header, is wholly inside double quotes); other delimiters are read with CSV quoting (doubled
quotes, quoted newlines). A row with fewer fields than the header (trailing empty fields cut off
by a spreadsheet) is padded with nulls; one with more raises ``FeedError`` naming its line.

Shopify product export (``shopify``)
------------------------------------

A product spans several rows sharing a ``Handle``: the first carries Title, Type, Status and the
first variant; the next rows are more variants (Option values, Variant SKU, Variant Price, ...)
and/or more images (only Image Src / Image Position / Image Alt Text filled). One row is produced
per variant; image-only rows are folded into their product and counted (``Feed.folded_rows``).

======================  ========================================================================
column                  from
======================  ========================================================================
sku_id                  Variant SKU; the Handle for the handle's first row when it has no SKU; a
                        later variant row without a SKU gets null (ingest: missing_sku_id) and a
                        note, never a silent drop or a duplicate of the Handle
item_group_id           Handle
title                   the product's Title + " - " + the variant's option values
                        ("Linen dress - Blue - M"; Shopify's "Default Title" is left out)
image_uri               Variant Image when set, else the product's first image (Image Position 1,
                        else the first Image Src)
additional_image_uris   the product's other Image Src values (by Image Position, then row order),
                        without image_uri
category                Type when set, else Product Category
category_path           Product Category when it is a path (holds ">"), else Type
is_active               Status: active -> "true", draft / archived -> "false", other words as
                        sent; without a Status column, Published: TRUE -> "true", FALSE -> "false"
updated_at              null (the export has none)
======================  ========================================================================

Product-level values (Title, Type, Product Category, Status, Published) are the first non-empty
one among the handle's rows. A row counts as a variant when it has a Title, a Variant SKU, an
option value or a variant price/barcode/weight/inventory; otherwise it is image-only. Required
columns: Handle, and Image Src or Variant Image.

The catalog's own formats (``csv``, ``parquet``)
------------------------------------------------

Passed through: read with pyarrow (CSV with quotes, doubled quotes and quoted newlines, as the
Spark reader does), every column cast to string (Parquet timestamps as ISO text), missing optional
columns added as nulls, values not trimmed (ingest trims ids and keeps titles as sent).
``item_group_id`` is kept when the catalog has it; ``additional_image_uris`` is [] (a column of
that name, space-separated, is split). Required: sku_id, category, image_uri, is_active. The
ingest stage may keep reading these two with Spark; this reader is for a single entry point and
for tools off the cluster.

``auto``
--------

A directory, a ``.parquet`` name or Parquet's magic bytes -> parquet. XML with the Google
namespace, or an ``<rss>`` / ``<feed>`` root -> google-merchant. A delimited header with Handle and
Variant SKU -> shopify; with id and image_link (``g:`` or not) -> google-merchant; else csv.

XML safety
----------

The XML is parsed with expat, streamed in 1 MiB chunks and never built into a tree (a million
items hold only their strings). Any DOCTYPE or ENTITY declaration is refused with ``FeedError``
before any entity is defined, so nothing is expanded (billion laughs) or fetched (XXE); an
undeclared entity reference is a parse error. CDATA and escaped markup come through as text; HTML
is not interpreted.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

GOOGLE_MERCHANT = "google-merchant"
SHOPIFY = "shopify"
CSV = "csv"
PARQUET = "parquet"
FEED_FORMATS = (GOOGLE_MERCHANT, SHOPIFY, CSV, PARQUET)

# The ingest stage's columns (lookalike.stages.ingest, which imports Spark: copied, and a test
# checks they agree), then what a feed adds.
REQUIRED_COLUMNS = ("sku_id", "category", "image_uri", "is_active")
OPTIONAL_COLUMNS = ("title", "updated_at", "category_path", "item_group_id")
FEED_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, "additional_image_uris")
FEED_SCHEMA = pa.schema(
    [pa.field(name, pa.string()) for name in FEED_COLUMNS[:-1]]
    + [pa.field("additional_image_uris", pa.list_(pa.string()))]
)

GOOGLE_NAMESPACE = "http://base.google.com/ns/1.0"
ATOM_NAMESPACE = "http://www.w3.org/2005/Atom"

_GOOGLE_USED = (
    "id",
    "title",
    "image_link",
    "additional_image_link",
    "product_type",
    "google_product_category",
    "availability",
    "item_group_id",
    "updated_at",
)
_GOOGLE_REQUIRED = ("id", "image_link")
_AVAILABLE = ("in_stock", "preorder", "backorder")
_UNAVAILABLE = ("out_of_stock",)

_SHOPIFY_VARIANT_SIGNALS = (
    "title",
    "variant sku",
    "option1 value",
    "option2 value",
    "option3 value",
    "variant price",
    "variant compare at price",
    "variant barcode",
    "variant grams",
    "variant inventory qty",
)
_SHOPIFY_USED = (
    "handle",
    "title",
    "type",
    "product category",
    "status",
    "published",
    "option1 value",
    "option2 value",
    "option3 value",
    "variant sku",
    "image src",
    "image position",
    "variant image",
    *_SHOPIFY_VARIANT_SIGNALS,
)
_SHOPIFY_DEFAULT_OPTION = "default title"

_DELIMITERS = ("\t", ",", "|", "~", ";")
_SAMPLE_BYTES = 64 * 1024
_XML_CHUNK = 1 << 20


class FeedError(ValueError):
    """The feed as a whole cannot be read (a bad row is kept, and ingest rejects it)."""


@dataclass(frozen=True)
class Feed:
    """A feed read into the catalog table, with what the mapping did to get there."""

    table: pa.Table
    format: str
    path: str
    input_rows: int  # data rows (TSV/CSV, not counting the header) or items (XML)
    folded_rows: int = 0  # Shopify image-only rows folded into their product, not emitted
    ignored_columns: tuple[str, ...] = ()  # feed columns the mapping does not use
    notes: tuple[str, ...] = field(default_factory=tuple)


def read_feed(path: str | Path, fmt: str = "auto") -> pa.Table:
    """The feed at ``path`` as the raw catalog table (``FEED_SCHEMA``); see the module's doc."""
    return read_feed_with_report(path, fmt).table


def read_feed_with_report(path: str | Path, fmt: str = "auto") -> Feed:
    """``read_feed`` and its report: rows read, rows folded, columns ignored, notes."""
    path = str(path)
    if not os.path.exists(path):
        raise FeedError(f"feed not found: {path}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FEED_FORMATS:
        raise FeedError(
            f"unknown feed format {fmt!r} for {path}; expected auto or one of "
            f"{', '.join(FEED_FORMATS)}"
        )
    if fmt == PARQUET:
        return _read_parquet(path)
    if _looks_like_xml(_sample(path)):
        if fmt != GOOGLE_MERCHANT:
            raise FeedError(f"{fmt} feed {path} is XML; only google-merchant feeds can be")
        return _read_google_xml(path)
    header, delimiter, quoted = _sniff_delimited(path)
    if fmt == GOOGLE_MERCHANT:
        return _read_google_delimited(path, header, delimiter, quoted)
    if fmt == SHOPIFY:
        return _read_shopify(path, header, delimiter)
    return _read_catalog_csv(path, header, delimiter)


def detect_format(path: str | Path) -> str:
    """Which of ``FEED_FORMATS`` the file at ``path`` is, from its name and content."""
    path = str(path)
    if os.path.isdir(path) or path.rstrip("/").lower().endswith(".parquet"):
        return PARQUET
    if not os.path.exists(path):
        raise FeedError(f"feed not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) == b"PAR1":
            return PARQUET
    sample = _sample(path)
    if _looks_like_xml(sample):
        head = sample[:_SAMPLE_BYTES]
        if GOOGLE_NAMESPACE in head or re.search(r"<(?:\w+:)?(?:rss|feed)[\s>]", head):
            return GOOGLE_MERCHANT
        raise FeedError(
            f"feed {path} is XML but neither RSS nor Atom with the Google namespace "
            f"({GOOGLE_NAMESPACE})"
        )
    header, _, _ = _sniff_delimited(path)
    names = {_shopify_name(h) for h in header}
    if {"handle", "variant sku"} <= names:
        return SHOPIFY
    if {"id", "image_link"} <= {_google_name(h) for h in header}:
        return GOOGLE_MERCHANT
    return CSV


# -- sniffing ----------------------------------------------------------------------------------


def _sample(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read(_SAMPLE_BYTES)
    return raw.decode("utf-8-sig", errors="replace")


def _looks_like_xml(sample: str) -> bool:
    return sample.lstrip().startswith("<")


def _sniff_delimited(path: str) -> tuple[list[str], str, bool]:
    """(header names, delimiter, whether fields are quoted)."""
    sample = _sample(path)
    first_line = sample.split("\n", 1)[0].rstrip("\r")
    if not first_line.strip():
        raise FeedError(f"feed {path} is empty: no header line")
    counts = {d: _count_outside_quotes(first_line, d) for d in _DELIMITERS}
    delimiter = max(_DELIMITERS, key=lambda d: counts[d])  # ties: the earlier in _DELIMITERS
    if counts[delimiter] == 0:
        delimiter = ","  # one column
    quoted = delimiter != "\t" or _tsv_is_quoted(sample)
    reader = csv.reader(
        io.StringIO(first_line if not quoted else sample),
        delimiter=delimiter,
        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
    )
    header = [h.strip() for h in next(reader)]
    return header, delimiter, quoted


def _count_outside_quotes(line: str, delimiter: str) -> int:
    count, inside = 0, False
    for char in line:
        if char == '"':
            inside = not inside
        elif char == delimiter and not inside:
            count += 1
    return count


_QUOTED_FIELD = re.compile(r'^"(?:[^"]|"")*"$', re.S)


def _tsv_is_quoted(sample: str) -> bool:
    lines = sample.split("\n")[:-1] or sample.split("\n")  # the last may be cut mid-line
    return any(
        _QUOTED_FIELD.match(value) for line in lines for value in line.rstrip("\r").split("\t")
    )


def _google_name(header: str) -> str:
    name = header.strip().strip('"').strip().lower()
    if name.startswith("g:"):
        name = name[2:]
    return re.sub(r"\s+", "_", name)


def _shopify_name(header: str) -> str:
    return re.sub(r"\s+", " ", header.strip().strip('"').strip().lower())


# -- delimited files ---------------------------------------------------------------------------


def _read_delimited(path: str, header: list[str], delimiter: str, quoted: bool) -> pa.Table:
    """Every column as a string, named as in the header (duplicates kept); short rows padded."""
    parse = pa_csv.ParseOptions(
        delimiter=delimiter,
        quote_char='"' if quoted else False,
        double_quote=True,
        newlines_in_values=quoted,
    )
    convert = pa_csv.ConvertOptions(
        column_types={name: pa.string() for name in header},
        # Only an empty field is null: pyarrow's default list would turn a SKU "NA" or a title
        # "null" or "N/A" into nulls.
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    try:
        table = pa_csv.read_csv(path, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as e:
        if "columns, got" not in str(e):
            raise FeedError(f"feed {path} cannot be read as delimited text: {e}") from e
        return _read_delimited_padding(path, header, delimiter, quoted)
    # pyarrow names the columns from its own reading of the header; keep ours (stripped).
    if table.num_columns != len(header):
        raise FeedError(f"feed {path}: header has {len(header)} columns, read {table.num_columns}")
    return table.rename_columns(header)


def _read_delimited_padding(path: str, header: list[str], delimiter: str, quoted: bool) -> pa.Table:
    """The slow path for a file whose rows do not all have the header's width: pads short rows
    with nulls, refuses a long one (a delimiter inside an unquoted value shifted it)."""
    try:
        return _read_rows_padding(path, header, delimiter, quoted)
    except (UnicodeDecodeError, csv.Error) as e:
        raise FeedError(f"feed {path} cannot be read as delimited UTF-8 text: {e}") from e


def _read_rows_padding(path: str, header: list[str], delimiter: str, quoted: bool) -> pa.Table:
    columns: list[list[str | None]] = [[] for _ in header]
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(
            f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
        )
        next(reader, None)
        for record in reader:
            if not record:
                continue  # a blank line, as pyarrow skips it
            if len(record) > len(header):
                raise FeedError(
                    f"feed {path}: line {reader.line_num} has {len(record)} fields, the header "
                    f"{len(header)} (an unquoted delimiter in a value?)"
                )
            for i, column in enumerate(columns):
                value = record[i] if i < len(record) else None
                column.append(value if value != "" else None)
    return pa.table([pa.array(c, pa.string()) for c in columns], names=header)


def _clean(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """Stripped of surrounding whitespace; null when nothing is left."""
    trimmed = pc.utf8_trim_whitespace(values)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


def _nulls(n: int) -> pa.Array:
    return pa.nulls(n, pa.string())


def _empty_lists(n: int) -> pa.Array:
    return pa.ListArray.from_arrays(np.zeros(n + 1, dtype=np.int32), pa.array([], pa.string()))


def _split_list(values: pa.ChunkedArray | pa.Array, pattern: str) -> pa.Array:
    """Each value split on ``pattern``, parts stripped, empty parts dropped; [] for null."""
    values = pc.fill_null(values, "")
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    lists = pc.split_pattern_regex(values, pattern)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists)
    keep = pc.not_equal(flat, "")
    flat = pc.filter(flat, keep)
    counts = np.bincount(pc.filter(parents, keep).to_numpy(), minlength=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return pa.LargeListArray.from_arrays(offsets, flat).cast(pa.list_(pa.string()))


def _feed_table(n: int, columns: dict[str, pa.Array | pa.ChunkedArray | None]) -> pa.Table:
    arrays = []
    for f in FEED_SCHEMA:
        value = columns.get(f.name)
        if value is None:
            value = _empty_lists(n) if f.name == "additional_image_uris" else _nulls(n)
        arrays.append(value)
    return pa.Table.from_arrays(arrays, schema=FEED_SCHEMA)


def _missing_error(fmt: str, path: str, missing: Iterable[str], found: Iterable[str]) -> FeedError:
    found = list(found)
    return FeedError(
        f"{fmt} feed {path} lacks required column(s) {', '.join(missing)}; "
        f"found: {', '.join(found) if found else '(none)'}"
    )


# -- Google Merchant Center --------------------------------------------------------------------


def _availability(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    key = pc.replace_substring_regex(pc.utf8_lower(values), r"[\s-]+", "_")
    return pc.if_else(
        pc.is_in(key, pa.array(_AVAILABLE)),
        "true",
        pc.if_else(pc.is_in(key, pa.array(_UNAVAILABLE)), "false", values),
    )


def _google_table(
    n: int, columns: dict[str, pa.Array | pa.ChunkedArray], additional: pa.Array
) -> pa.Table:
    """``columns``: cleaned values by attribute name (without ``g:``)."""
    product_type = columns.get("product_type")
    gpc = columns.get("google_product_category")
    if product_type is not None and gpc is not None:
        category = pc.coalesce(product_type, gpc)
    else:
        category = product_type if product_type is not None else gpc
    availability = columns.get("availability")
    return _feed_table(
        n,
        {
            "sku_id": columns.get("id"),
            "category": category,
            "image_uri": columns.get("image_link"),
            "is_active": None if availability is None else _availability(availability),
            "title": columns.get("title"),
            "updated_at": columns.get("updated_at"),
            "category_path": product_type,
            "item_group_id": columns.get("item_group_id"),
            "additional_image_uris": additional,
        },
    )


def _google_notes(found: Iterable[str]) -> list[str]:
    found = set(found)
    notes = []
    if "availability" not in found:
        notes.append(
            "no availability attribute: is_active is null on every row "
            "(ingest rejects them as invalid_is_active)"
        )
    if "product_type" not in found and "google_product_category" not in found:
        notes.append(
            "neither product_type nor google_product_category: category is null on every row "
            "(ingest rejects them as missing_category)"
        )
    return notes


def _read_google_delimited(path: str, header: list[str], delimiter: str, quoted: bool) -> Feed:
    names = [_google_name(h) for h in header]
    missing = [r for r in _GOOGLE_REQUIRED if r not in names]
    if missing:
        raise _missing_error(GOOGLE_MERCHANT, path, missing, header)
    raw = _read_delimited(path, header, delimiter, quoted)
    columns: dict[str, pa.ChunkedArray] = {}
    for i, name in enumerate(names):
        if name in _GOOGLE_USED and name not in columns and name != "additional_image_link":
            columns[name] = _clean(raw.column(i))
    extra = [raw.column(i) for i, name in enumerate(names) if name == "additional_image_link"]
    n = raw.num_rows
    if not extra:
        additional = _empty_lists(n)
    elif len(extra) == 1:
        additional = _split_list(extra[0], ",")
    else:
        joined = pc.binary_join_element_wise(*extra, ",", null_handling="skip")
        additional = _split_list(joined, ",")
    ignored = tuple(h for h, name in zip(header, names, strict=True) if name not in _GOOGLE_USED)
    return Feed(
        table=_google_table(n, columns, additional),
        format=GOOGLE_MERCHANT,
        path=path,
        input_rows=n,
        ignored_columns=ignored,
        notes=tuple(_google_notes(names)),
    )


class _RefusedXml(Exception):
    pass


class _ItemCollector:
    """expat handlers gathering each item's direct children: the first text of each name (a
    ``g:`` element replacing an un-prefixed one) and every additional_image_link."""

    def __init__(self) -> None:
        self.values: dict[str, list[str | None]] = {name: [] for name in _GOOGLE_USED}
        self.additional: list[list[str]] = []
        self.seen: dict[str, None] = {}  # child names in order of first appearance
        self.items = 0
        self._depth = 0
        self._item_depth: int | None = None
        self._child: tuple[str, bool] | None = None  # (name, in the google namespace)
        self._text: list[str] = []
        self._row: dict[str, tuple[str, bool]] = {}
        self._row_additional: list[str] = []
        self._names: dict[str, tuple[str, bool]] = {}  # expat's name -> _child_name's

    def start(self, name: str, attrs: dict[str, str]) -> None:
        self._depth += 1
        if self._item_depth is None:
            if name.rpartition(" ")[2] in ("item", "entry"):
                self._item_depth = self._depth
                self._row, self._row_additional = {}, []
        elif self._depth == self._item_depth + 1:
            child = self._names.get(name)
            if child is None:
                child = self._names[name] = _child_name(name)
            self._child = child
            self._text = []
            self.seen.setdefault(child[0], None)

    def end(self, name: str) -> None:
        if self._item_depth is not None:
            if self._depth == self._item_depth + 1 and self._child is not None:
                key, is_google = self._child
                text = "".join(self._text).strip()
                if key == "additional_image_link":
                    if text:
                        self._row_additional.append(text)
                elif key not in self._row or (is_google and not self._row[key][1]):
                    self._row[key] = (text, is_google)
                self._child = None
            elif self._depth == self._item_depth:
                self._finish_item()
                self._item_depth = None
        self._depth -= 1

    def chars(self, data: str) -> None:
        if self._child is not None and self._depth == self._item_depth + 1:
            self._text.append(data)

    def _finish_item(self) -> None:
        self.items += 1
        for name, column in self.values.items():
            value = self._row.get(name)
            column.append(value[0] or None if value is not None else None)
        self.additional.append(self._row_additional)


def _child_name(name: str) -> tuple[str, bool]:
    """(attribute name, whether in the Google namespace) of an item's child element, which
    expat names "namespace-uri local-name". Elements of other namespaces than Google's, Atom's
    or none keep their namespace, so that a ``<dc:title>`` is never taken for the title."""
    uri, _, local = name.rpartition(" ")
    if uri in ("", GOOGLE_NAMESPACE, ATOM_NAMESPACE):
        return _google_name(local), uri == GOOGLE_NAMESPACE
    return f"{{{uri}}}{local}", False


def _refuse(what: str):
    def handler(*_args) -> None:
        raise _RefusedXml(what)

    return handler


def _read_google_xml(path: str) -> Feed:
    collector = _ItemCollector()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse("a DOCTYPE declaration")
    parser.EntityDeclHandler = _refuse("an ENTITY declaration")
    parser.UnparsedEntityDeclHandler = _refuse("an ENTITY declaration")
    parser.ExternalEntityRefHandler = _refuse("an external entity")
    parser.StartElementHandler = collector.start
    parser.EndElementHandler = collector.end
    parser.CharacterDataHandler = collector.chars
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_XML_CHUNK):
                parser.Parse(chunk, False)
            parser.Parse(b"", True)
    except _RefusedXml as e:
        raise FeedError(
            f"google-merchant feed {path} holds {e} (line {parser.CurrentLineNumber}); "
            "feeds with DOCTYPE or ENTITY declarations are refused, nothing was expanded"
        ) from None
    except expat.ExpatError as e:
        raise FeedError(f"google-merchant feed {path} is not well-formed XML: {e}") from None
    found = list(collector.seen)
    n = collector.items
    if n:
        missing = [r for r in _GOOGLE_REQUIRED if r not in collector.seen]
        if missing:
            raise _missing_error(GOOGLE_MERCHANT, path, missing, found)
    columns = {
        name: pa.array(values, pa.string())
        for name, values in collector.values.items()
        if name in collector.seen
    }
    notes = _google_notes(found) if n else ["the feed has no <item> or <entry>"]
    return Feed(
        table=_google_table(n, columns, pa.array(collector.additional, pa.list_(pa.string()))),
        format=GOOGLE_MERCHANT,
        path=path,
        input_rows=n,
        ignored_columns=tuple(name for name in found if name not in _GOOGLE_USED),
        notes=tuple(notes),
    )


# -- Shopify -----------------------------------------------------------------------------------


def _shopify_status(status: str | None, published: str | None, has_status: bool) -> str | None:
    value = status if has_status else published
    if value is None:
        return None
    key = value.lower()
    if has_status:
        if key == "active":
            return "true"
        if key in ("draft", "archived"):
            return "false"
    elif key in ("true", "false"):
        return key
    return value


def _position(value: str | None) -> float:
    try:
        return float(value) if value is not None else float("inf")
    except ValueError:
        return float("inf")


def _read_shopify(path: str, header: list[str], delimiter: str) -> Feed:
    names = [_shopify_name(h) for h in header]
    missing = []
    if "handle" not in names:
        missing.append("Handle")
    if "image src" not in names and "variant image" not in names:
        missing.append("Image Src (or Variant Image)")
    if missing:
        raise _missing_error(SHOPIFY, path, missing, header)
    raw = _read_delimited(path, header, delimiter, quoted=True)
    n_input = raw.num_rows
    index = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)

    def col(name: str) -> list[str | None]:
        i = index.get(name)
        return [None] * n_input if i is None else _clean(raw.column(i)).to_pylist()

    cols = {name: col(name) for name in dict.fromkeys(_SHOPIFY_USED)}
    has_status = "status" in index
    signals = [cols[s] for s in _SHOPIFY_VARIANT_SIGNALS]

    # Products by handle, in order of first appearance; rows need not be contiguous.
    products: dict[str | None, dict] = {}
    folded = orphans = 0
    for r in range(n_input):
        handle = cols["handle"][r]
        is_variant = any(s[r] is not None for s in signals)
        if handle is None:
            # Not a product Shopify could import; a variant is still kept, alone.
            if not is_variant:
                orphans += 1
                continue
            key: object = ("no handle", r)
        else:
            key = handle
        product = products.get(key)
        if product is None:
            product = products[key] = {"handle": handle, "rows": [], "variants": [], "images": []}
            is_variant = True  # a handle's first row is its first variant
        product["rows"].append(r)
        image = cols["image src"][r]
        if image is not None:
            product["images"].append(
                (_position(cols["image position"][r]), len(product["images"]), image)
            )
        if is_variant:
            product["variants"].append(r)
        else:
            folded += 1

    out: dict[str, list] = {name: [] for name in FEED_COLUMNS}
    no_sku = 0
    for product in products.values():
        rows = product["rows"]

        def first(name: str, rows=rows) -> str | None:
            return next((cols[name][r] for r in rows if cols[name][r] is not None), None)

        title, kind, taxonomy = first("title"), first("type"), first("product category")
        active = _shopify_status(first("status"), first("published"), has_status)
        images = [uri for _, _, uri in sorted(product["images"])]
        images = list(dict.fromkeys(images))
        handle = product["handle"]
        for n_variant, r in enumerate(product["variants"]):
            sku = cols["variant sku"][r]
            if sku is None:
                if n_variant == 0:
                    sku = handle
                else:
                    no_sku += 1
            options = [
                v
                for v in (cols[f"option{k} value"][r] for k in (1, 2, 3))
                if v is not None and v.lower() != _SHOPIFY_DEFAULT_OPTION
            ]
            main = cols["variant image"][r] or (images[0] if images else None)
            out["sku_id"].append(sku)
            out["item_group_id"].append(handle)
            out["title"].append(" - ".join([title, *options]) if title is not None else None)
            out["image_uri"].append(main)
            out["additional_image_uris"].append([u for u in images if u != main])
            out["category"].append(kind if kind is not None else taxonomy)
            out["category_path"].append(
                taxonomy if taxonomy is not None and ">" in taxonomy else kind
            )
            out["is_active"].append(active)
            out["updated_at"].append(None)
    table = pa.Table.from_pydict(out, schema=FEED_SCHEMA)
    notes = []
    if folded:
        notes.append(f"{folded} image-only row(s) folded into their product's images")
    if no_sku:
        notes.append(
            f"{no_sku} variant row(s) after a product's first have no Variant SKU: kept with a "
            "null sku_id (ingest rejects them as missing_sku_id)"
        )
    if orphans:
        notes.append(f"{orphans} row(s) with neither a Handle nor variant data skipped")
    if not has_status and "published" not in index:
        notes.append("neither Status nor Published: is_active is null on every row")
    return Feed(
        table=table,
        format=SHOPIFY,
        path=path,
        input_rows=n_input,
        folded_rows=folded,
        ignored_columns=tuple(
            h for h, name in zip(header, names, strict=True) if name not in _SHOPIFY_USED
        ),
        notes=tuple(notes),
    )


# -- the catalog's own formats -----------------------------------------------------------------


def _catalog_feed(path: str, fmt: str, raw: pa.Table, input_rows: int) -> Feed:
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.column_names]
    if missing:
        raise _missing_error(fmt, path, missing, raw.column_names)
    n = raw.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray | None] = {}
    for name in FEED_COLUMNS[:-1]:
        if name in raw.column_names:
            columns[name] = _as_string(raw.column(name))
    if "additional_image_uris" in raw.column_names:
        extra = raw.column("additional_image_uris")
        if pa.types.is_list(extra.type) or pa.types.is_large_list(extra.type):
            columns["additional_image_uris"] = extra.cast(pa.list_(pa.string()))
        else:
            columns["additional_image_uris"] = _split_list(_as_string(extra), r"\s+")
    return Feed(
        table=_feed_table(n, columns),
        format=fmt,
        path=path,
        input_rows=input_rows,
        ignored_columns=tuple(c for c in raw.column_names if c not in FEED_COLUMNS),
    )


def _as_string(values: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_string(values.type):
        return values
    if pa.types.is_timestamp(values.type):
        # "2024-05-01 10:00:00.000000" (and "Z" when zoned): what Spark's timestamp parsing
        # reads; nanoseconds cut to microseconds, Spark's precision.
        values = values.cast(pa.timestamp("us", values.type.tz), safe=False)
    return values.cast(pa.string())


def _read_catalog_csv(path: str, header: list[str], delimiter: str) -> Feed:
    # As the Spark reader: comma-separated, quotes doubled, newlines inside quotes.
    if delimiter != ",":
        header = [h.strip() for h in next(csv.reader(io.StringIO(_sample(path))), [])]
    raw = _read_delimited(path, header, ",", quoted=True)
    return _catalog_feed(path, CSV, raw, raw.num_rows)


def _read_parquet(path: str) -> Feed:
    try:
        raw = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise FeedError(f"parquet catalog {path} cannot be read: {e}") from e
    return _catalog_feed(path, PARQUET, raw, raw.num_rows)
