"""Numbers as the views print them: short, never ``-0``, sums written ``0 − 1.741``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["format_value", "format_sum", "join_signed", "superscript", "shorten"]

MINUS = "−"  # U+2212: the operator in a written sum; a negative number keeps its '-'


def _clean(a: np.ndarray) -> np.ndarray:
    """-0.0 becomes 0.0 (adding +0.0 does exactly that, and nothing else)."""
    if a.dtype.kind in "fc":
        return a + a.dtype.type(0)
    return a


def _scalar(v: Any, precision: int) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.{precision}g}"
    if isinstance(v, complex):
        return f"{v:.{precision}g}"
    return str(v)


def format_value(a: Any, precision: int = 4, full: bool = False, max_items: int = 6) -> str:
    """A short text form of an array: the number itself, the small array, or a summary.

    Large arrays show their shape, norm and first entries; ``full=True``
    prints every entry at full (repr) precision. Negative zero prints as 0.

    >>> format_value(np.array(-0.0)), format_value(np.array([0.5, -0.0, 1/3]))
    ('0', '[0.5, 0, 0.3333]')
    """
    if a is None:
        return "-"
    a = _clean(np.asarray(a))
    if full:
        with np.printoptions(precision=17, threshold=sys.maxsize, floatmode="unique"):
            return np.array2string(a, separator=", ").replace("\n", "")
    if a.size == 1:
        return _scalar(a.reshape(()).item(), precision)
    if a.size <= max_items:
        if a.dtype.kind == "f":  # significant digits, as for a single number
            return np.array2string(
                a, separator=", ", max_line_width=10**6,
                formatter={"float_kind": lambda x: _scalar(float(x), precision)}
            ).replace("\n", "")
        return np.array2string(a, separator=", ", max_line_width=10**6).replace("\n", "")
    flat = a.reshape(-1)
    if a.dtype.kind in "fc":
        first = ", ".join(_scalar(float(x), precision) for x in flat[:3])
        norm = _scalar(float(np.linalg.norm(flat.astype(np.float64))), precision)
    else:
        first = ", ".join(str(x) for x in flat[:3])
        norm = "-"
    return f"shape {a.shape}, norm {norm}, [{first}, ...]"


def format_sum(values: Sequence[Any], precision: int = 4, full: bool = False) -> str:
    """``7 + 2``, ``0 − 3.333``: the terms of a sum of numbers, signs as operators.

    >>> format_sum([np.array(0.0), np.array(-3.333)])
    '0 − 3.333'
    """
    return join_signed([format_value(v, precision, full) for v in values])


def join_signed(texts: Sequence[str]) -> str:
    """Join terms into a sum, a leading '-' of a later term becoming the operator.

    >>> join_signed(["0.5·2", "-0.25·(-1)"])
    '0.5·2 − 0.25·(-1)'
    """
    parts: list[str] = []
    for i, text in enumerate(texts):
        if i and text.startswith("-"):
            parts.append(f"{MINUS} {text[1:]}")
        elif i:
            parts.append(f"+ {text}")
        else:
            parts.append(text)
    return " ".join(parts)


_SUPER = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def superscript(n: int) -> str:
    """``superscript(12)`` -> ``'¹²'`` (layer indices: W¹, δ²)."""
    return str(n).translate(_SUPER)


def shorten(text: str, width: int = 60) -> str:
    """Long expressions keep their start and end: ``x*x+x*x+ … +x*x``."""
    if len(text) <= width:
        return text
    keep = (width - 3) // 2
    return f"{text[:keep]} … {text[-keep:]}"
