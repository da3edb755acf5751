"""Input rows: a JSONL line (``{"id", "text"}``) or a plain text line, read the same way by every door."""

from __future__ import annotations

import json
from typing import Any

NOT_TEXT = "field 'text' is missing or not a string"


def parse_line(line: str) -> dict[str, Any]:
    """One JSONL line (``{"id", "text"}``) or plain text line as ``{"id", "text", "error"}`` (id None if absent,
    error None if the row is good). A line that looks like JSON but is not keeps its raw text and gets an error.
    """
    if not line.lstrip().startswith("{"):
        return {"id": None, "text": line, "error": None}
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        return {"id": None, "text": line, "error": f"not valid JSON ({err.msg})"}
    if not isinstance(data, dict):
        return {"id": None, "text": "", "error": NOT_TEXT}
    return record(data.get("id"), data.get("text"))


def record(id_: Any, text: Any) -> dict[str, Any]:
    """A row from an id and a text field as read (the text must be a string; id None if absent)."""
    row_id = None if id_ is None else str(id_)
    if isinstance(text, str):
        return {"id": row_id, "text": text, "error": None}
    return {"id": row_id, "text": "", "error": NOT_TEXT}
