"""CSV cells that a spreadsheet opens as text, never as a formula (OWASP "CSV injection").

Seller text (titles, sku ids, categories) reaches the merchandisers' CSV exports, and Excel,
LibreOffice and Google Sheets run a cell that starts with ``=``, ``+``, ``-`` or ``@`` (or a tab
or carriage return before one) as a formula: ``=HYPERLINK(...)`` becomes a link to anywhere,
``=cmd|...`` a DDE prompt. Every CSV the job writes for people passes its text through here;
the Delta tables and the HTML report keep the true text. Rows end in CRLF, as RFC 4180 says:
Python's csv writer quotes a cell only for the characters of its line ending, so with "\n"
alone a title holding a bare carriage return went out unquoted and split its row in two.
"""

from __future__ import annotations

import pandas as pd

# The first characters OWASP lists as starting a formula in some spreadsheet.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """``value`` with a single quote in front when it is text that a spreadsheet would take as a
    formula; any other value (numbers, booleans, None, ordinary text) unchanged.

    Only ``str`` is touched: a negative score is a number, not text, and must stay one.
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def spreadsheet_safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells are ``spreadsheet_safe``; numeric columns as they are.

    Decided per cell, by type: a text column may hold None, and an object column may mix text
    with numbers or booleans, which stay what they are.
    """
    text_columns = [
        name
        for name, dtype in frame.dtypes.items()
        if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)
    ]
    if not text_columns:
        return frame
    return frame.assign(**{name: frame[name].map(spreadsheet_safe) for name in text_columns})


def spreadsheet_csv(frame: pd.DataFrame) -> str:
    """``frame`` as CSV text for people: a header, its text cells ``spreadsheet_safe``, cells
    quoted where RFC 4180 needs it (a comma, a quote, a line break), CRLF line endings."""
    return spreadsheet_safe_frame(frame).to_csv(index=False, lineterminator="\r\n")
