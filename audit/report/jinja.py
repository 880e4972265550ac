"""The report's Jinja2 environment: the shipped templates, behind a team's overrides.

The templates live in the project's top-level ``templates/`` folder (shipped inside
the package as ``audit/templates``). ``report.templates`` names a folder searched
first: a file there with the same relative name (``sections/summary.html.j2``,
``style.css.j2``, ...) replaces the shipped one, so a team can brand the report or
rewrite one section without forking; every other template stays as shipped.
"""
from __future__ import annotations

from pathlib import Path

import jinja2

from audit.report.fmt import fmt_num, fmt_pct, fmt_seconds

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def environment(overrides: str | Path | None = None) -> jinja2.Environment:
    """A Jinja2 environment over ``overrides`` (searched first, when given) and the shipped templates.

    Autoescape is on and undefined names raise; filters ``num``, ``pct`` and
    ``seconds`` format numbers; ``tojson`` keeps key order and refuses NaN.
    """
    folders = ([str(overrides)] if overrides is not None else []) + [str(TEMPLATES)]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folders), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["num"] = fmt_num
    env.filters["pct"] = fmt_pct
    env.filters["seconds"] = fmt_seconds
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False, "allow_nan": False}
    return env
