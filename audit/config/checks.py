"""Value checks of the config schema: each a ``Check`` that tests a value and says what it must be.

The text completes the one error format of the config: "`select.margin` must be
<text> (got 3)".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Check:
    """A test of a setting's value and the words for what it must be.

    Calling the check with a value returns ``test(value)`` as a bool.

    Attributes
    ----------
    test : callable
        ``value -> bool``; ``True`` when the value is acceptable.
    text : str or callable
        What the value must be, e.g. "a float in [0, 1]" (a callable when it
        depends on the run time, such as the registered methods).
    """

    test: Callable[[Any], bool]
    text: str | Callable[[], str]

    def __call__(self, value: Any) -> bool:
        return bool(self.test(value))

    def describe(self) -> str:
        """``text``, called if it is a callable: the words after "must be" in the error line."""
        return self.text() if callable(self.text) else self.text


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def integer(low: int | None = None, high: int | None = None, text: str | None = None) -> Check:
    """An int (not a bool) in [``low``, ``high``]; a bound of None is open-ended.

    Parameters
    ----------
    low, high : int, optional
        Inclusive bounds.
    text : str, optional
        The words for the error; default derived from the bounds ("a positive int").
    """
    default = ("a positive int" if low == 1 and high is None else "a non-negative int" if low == 0 and high is None
               else f"an int >= {low}" if high is None else f"an int in [{low}, {high}]")
    return Check(lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high), text or default)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, text: str) -> Check:
    """A non-NaN int or float (not a bool) within the bounds.

    Parameters
    ----------
    low, high : float, optional
        Bounds; None is open-ended.
    low_open, high_open : bool
        The bound itself is excluded.
    text : str
        The words for the error ("a float in [0, 1]").
    """
    def test(v: Any) -> bool:
        if not _is_number(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or (v < high if high_open else v <= high)
    return Check(test, text)


FLAG = Check(lambda v: isinstance(v, bool), "true or false")
TEXT = Check(lambda v: isinstance(v, str) and v != "", "a non-empty string")
POSITIVE_INT = integer(1)
NON_NEGATIVE_INT = integer(0)
FRACTION = number(0, 1, text="a float in [0, 1]")


def optional(check: Check, text: str | None = None) -> Check:
    """``check`` or ``None`` (null in YAML); ``text`` defaults to the check's words + " or null"."""
    return Check(lambda v: v is None or check(v), text or (lambda: f"{check.describe()} or null"))


def text(words: str) -> Check:
    """A non-empty string, described by ``words`` ("a folder path")."""
    return Check(TEXT.test, words)


def output_name() -> Check:
    """A model output: a non-empty name or a non-negative index."""
    return Check(lambda v: TEXT(v) or (_is_int(v) and v >= 0), "an output name or a non-negative index")


def choice(*options: str) -> Check:
    """One of ``options``."""
    return Check(lambda v: v in options, "one of " + ", ".join(options))


def pair() -> Check:
    """``"true:predicted"``: two non-empty class names."""
    return Check(lambda v: isinstance(v, str) and v.count(":") == 1 and all(p.strip() for p in v.split(":")),
                 "\"true:predicted\", two class names")


def run_id() -> Check:
    """A run ID: a string of letters, digits, ``-`` and ``_`` (a folder name)."""
    return Check(lambda v: isinstance(v, str) and v.replace("-", "").replace("_", "").isalnum(),
                 "letters, digits, - and _ only")


def names(what: str) -> Check:
    """A non-empty list of non-empty strings, described as "a non-empty list of ``what``" (layer names, ...)."""
    return Check(lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(TEXT(x) for x in v),
                 f"a non-empty list of {what}")


def methods() -> Check:
    """A non-empty list of registered attribution methods."""
    def test(v: Any) -> bool:
        from audit.explainers import available

        return isinstance(v, (list, tuple)) and len(v) > 0 and all(m in available() for m in v)

    def words() -> str:
        from audit.explainers import available

        return "a non-empty list of: " + ", ".join(available())
    return Check(test, words)


def method_params() -> Check:
    """A mapping of registered method name to a mapping of its keyword arguments."""
    def test(v: Any) -> bool:
        from audit.explainers import available

        return hasattr(v, "items") and all(m in available() and (p is None or hasattr(p, "items"))
                                           for m, p in v.items())
    return Check(test, "a mapping of registered method name to a mapping of its parameters")


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_TEXT = "a duration such as 90s, 45m or 1.5h (a plain number: seconds) or null"


def seconds_of(value: Any) -> float | None:
    """Seconds of the duration ``value``: ``None`` stays ``None``; a positive number is seconds; a string
    is a positive number with an optional unit ``s``, ``m`` or ``h`` ("45m", "1.5h", "90"). Raises
    ``ValueError`` for anything else."""
    if value is None:
        return None
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        unit = DURATION_UNITS.get(text[-1])
        try:
            seconds = float(text[:-1] if unit else text) * (unit or 1.0)
        except ValueError:
            raise ValueError(f"not a duration: {value!r}") from None
    else:
        raise ValueError(f"not a duration: {value!r}")
    if not (seconds > 0 and seconds != float("inf")):
        raise ValueError(f"not a positive duration: {value!r}")
    return seconds


def _is_duration(value: Any) -> bool:
    try:
        seconds_of(value)
    except ValueError:
        return False
    return True


DURATION = Check(_is_duration, DURATION_TEXT)
