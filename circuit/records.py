"""Input rows: a JSONL line (``{"id", "text"}``) or a plain text line, read the same way by every door."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

NOT_TEXT = "field 'text' is missing or not a string"
_SURROGATE = re.compile("[\ud800-\udfff]")  # only a lone half can be left in a str: a JSON pair decodes to one character


def text_lines(data: Iterable[bytes]) -> Iterator[str]:
    """The lines of UTF-8 ``data``, a binary file or stream (which splits at ``\\n`` only, not at ``\\r``, form
    feeds and the like), without their ``\\n`` and one ``\\r`` before it; a leading BOM is dropped and bytes that
    are not UTF-8 read as U+FFFD."""
    for n, raw in enumerate(data):
        line = raw.decode("utf-8-sig" if n == 0 else "utf-8", errors="replace").removesuffix("\n")
        yield line.removesuffix("\r")


def parse_line(line: str) -> dict[str, Any]:
    """One JSONL line (``{"id", "text"}``) or plain text line as ``{"id", "text", "error"}`` (id None if absent,
    error None if the row is good). A line that looks like JSON but is not gets an empty text and an error, so that
    no model answers it.
    """
    if not line.lstrip().startswith("{"):
        return {"id": None, "text": line, "error": None}
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        return {"id": None, "text": "", "error": f"not valid JSON ({err.msg})"}
    if not isinstance(data, dict):
        return {"id": None, "text": "", "error": NOT_TEXT}
    return record(data.get("id"), data.get("text"))


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate (which UTF-8 cannot encode) replaced by U+FFFD, so offsets keep."""
    return _SURROGATE.sub("\ufffd", text)


def record(id_: Any, text: Any) -> dict[str, Any]:
    """A row from an id and a text field as read (the text must be a string; id None if absent); lone surrogates
    in either become U+FFFD. A numeric id keeps its type (a JSON number is written back as a number); any other
    id becomes a string."""
    row_id = id_ if id_ is None or (isinstance(id_, int | float) and not isinstance(id_, bool)) else clean_text(str(id_))
    if isinstance(text, str):
        return {"id": row_id, "text": clean_text(text), "error": None}
    return {"id": row_id, "text": "", "error": NOT_TEXT}
