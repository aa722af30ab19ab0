"""Class names: one safe, documented set of characters for every name a dataset, a model
file or a page may carry, so that a name can never be markup, a path or a control code.

A name is 1-64 characters: letters and digits of any script (with the combining marks of
scripts such as Devanagari or Thai), space, ``-``, ``_``, ``.``, ``,``, ``(`` and ``)``; it
neither starts nor ends with a space, and is not ``.`` or ``..``.
"""

from __future__ import annotations

import re

_CHAR = r"[\w\u0300-\u036f\u0900-\u0dff\u0e00-\u0eff.,()\-]"
_INNER = r"[\w\u0300-\u036f\u0900-\u0dff\u0e00-\u0eff .,()\-]"
CLASS_NAME_REGEX = rf"^(?!\.{{1,2}}$){_CHAR}(?:{_INNER}{{0,62}}{_CHAR})?$"
RULE = (
    "1-64 letters or digits of any script, spaces, '-', '_', '.', ',', '(' or ')'; "
    "no space at either end"
)


def is_valid(name: str) -> bool:
    return re.fullmatch(CLASS_NAME_REGEX, name) is not None


def natural_key(name: str) -> list:
    """Sort key putting ``2`` before ``10`` and ``class 9`` before ``class 10``."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part.casefold())
        for part in re.split(r"(\d+)", name)
        if part
    ]


def natural_sorted(names) -> list[str]:
    """Class names in Refit's order for new classes: natural, then case-insensitive."""
    return sorted(names, key=natural_key)
