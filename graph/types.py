"""Link and type matching rules (COMPAT §1.1, §1.2, §2.1)."""
from __future__ import annotations

import re
from typing import Any

ANY_TYPES = ("*", "COMFY_MATCHTYPE_V3")
# The only declared types whose constants validation coerces and writes back (COMPAT §3.1).
SCALAR_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
_FALSE_WORDS = frozenset({"false", "0", "no", "off", ""})


def is_link(value: Any) -> bool:
    """A link is exactly a 2-list [str node id, int/float slot]; int node ids are not links."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool))


def types_match(received: Any, expected: Any) -> bool:
    """Can an output of type `received` feed an input declared `expected`?

    `not (received != expected)` rather than `==` so that str subclasses overriding __ne__
    (the legacy "accept anything" trick of plugins) keep working.
    """
    if not (received != expected):
        return True
    if received in ANY_TYPES or expected in ANY_TYPES:
        return True
    if isinstance(received, list) and expected == "COMBO":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return bool(got & want) or "*" in got or "*" in want


def coerce_boolean(value: Any) -> bool:
    """bool() except that the words false/0/no/off (any case) mean False (our COMPAT fix)."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_WORDS
    return bool(value)


def coerce_scalar(type_name: str, value: Any) -> Any:
    """Python int()/float()/str()/bool() as validation applies them; raises on failure."""
    if type_name == "INT":
        return int(value)
    if type_name == "FLOAT":
        return float(value)
    if type_name == "STRING":
        return str(value)
    if type_name == "BOOLEAN":
        return coerce_boolean(value)
    return value


_DIGITS = re.compile(r"(\d+)")


def node_id_key(node_id: Any) -> tuple:
    """Numeric-aware sort key for node ids: "2" < "10" < "10:2" < "a"."""
    parts = _DIGITS.split(str(node_id))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p != "")


def sorted_ids(ids) -> list:
    return sorted(ids, key=node_id_key)
