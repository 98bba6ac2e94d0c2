"""Check fed document fields against the generated schema, the way Vespa's JSON reader would.

Field names and types are read from the schema text the package generates (not from the feed code),
and tensor cells must be in one of the JSON forms Vespa documents for mixed tensors with one mapped
dimension: a map of label -> hex string (two hex digits per int8 cell, four per bfloat16 cell) or
label -> list of numbers of the dense size.
"""

from __future__ import annotations

import base64
import binascii
import re

from pipelines.vespa import app

_FIELD = re.compile(r"^\s*field (\w+) type (.+?) \{", re.M)
_TENSOR = re.compile(r"tensor<(\w+)>\((\w+)\{\}, (\w+)\[(\d+)\]\)")
_DENSE = re.compile(r"tensor<(\w+)>\((\w+)\[(\d+)\]\)")
_HEX_DIGITS_PER_CELL = {"int8": 2, "bfloat16": 4, "float": 8}


def schema_fields(settings: app.VespaAppSettings | None = None) -> dict[str, str]:
    text = app.package_files(settings or app.VespaAppSettings())["schemas/pdf_page.sd"]
    return dict(_FIELD.findall(text))


def validator(settings: app.VespaAppSettings | None = None):
    """A ``FakeVespa.validator``: ``(doctype, fields) -> problems`` for the pdf_page schema."""
    types = schema_fields(settings)

    def check(doctype: str, fields: dict) -> list[str]:
        problems = []
        if doctype != app.SCHEMA_NAME:
            return [f"unknown document type {doctype!r}"]
        for name, value in fields.items():
            kind = types.get(name)
            if kind is None:
                problems.append(f"no field {name!r} in the schema")
            elif kind == "string" and not isinstance(value, str):
                problems.append(f"{name}: expected a string")
            elif kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                problems.append(f"{name}: expected an int")
            elif kind == "raw":
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, TypeError):
                    problems.append(f"{name}: raw fields take base64")
            elif kind.startswith("tensor"):
                problems.extend(_check_tensor(name, kind, value))
        return problems

    return check


def _check_dense(name: str, cell_type: str, size: int, value) -> list[str]:
    """Vespa's JSON for an indexed tensor: ``{"values": <hex string> | [cells]}``."""
    cells = value.get("values") if isinstance(value, dict) else None
    if isinstance(cells, str):
        if len(cells) != size * _HEX_DIGITS_PER_CELL[cell_type] or not re.fullmatch(r"[0-9a-fA-F]+", cells):
            return [f"{name}: hex string of wrong length or alphabet ({len(cells)} chars)"]
        return []
    if isinstance(cells, list):
        return [] if len(cells) == size else [f"{name}: {len(cells)} cells, expected {size}"]
    return [f"{name}: expected {{'values': hex string or list}}"]


def _check_tensor(name: str, kind: str, value) -> list[str]:
    dense = _DENSE.fullmatch(kind)
    if dense is not None:
        cell_type, _, size = dense.groups()
        return _check_dense(name, cell_type, int(size), value)
    cell_type, _, _, size = _TENSOR.fullmatch(kind).groups()
    size = int(size)
    if not isinstance(value, dict) or not value:
        return [f"{name}: expected a non-empty map of patch label -> cells"]
    problems = []
    for label, cells in value.items():
        if not label.isdigit():
            problems.append(f"{name}: bad label {label!r}")
        elif isinstance(cells, str):
            if len(cells) != size * _HEX_DIGITS_PER_CELL[cell_type] or not re.fullmatch(r"[0-9a-fA-F]+", cells):
                problems.append(f"{name}[{label}]: hex string of wrong length or alphabet ({len(cells)} chars)")
        elif isinstance(cells, list):
            if len(cells) != size:
                problems.append(f"{name}[{label}]: {len(cells)} cells, expected {size}")
            elif cell_type == "int8" and not all(isinstance(c, int) and -128 <= c <= 127 for c in cells):
                problems.append(f"{name}[{label}]: int8 cells out of range")
        else:
            problems.append(f"{name}[{label}]: cells must be a hex string or a list")
        if problems:
            break
    return problems
