"""Where a YAML document is broken, for an error message that names the line.

>>> import yaml
>>> try:
...     yaml.safe_load("a: [1\\nb: 2")
... except yaml.YAMLError as exc:
...     print(where("config.yaml", exc), "|", problem(exc))
config.yaml:2 | expected ',' or ']', but got ':'
"""

from __future__ import annotations

import yaml


def line_of(exc: yaml.YAMLError) -> int | None:
    """The 1-based line PyYAML blames (its problem mark, else its context mark), or None."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def where(path: str, exc: yaml.YAMLError) -> str:
    """``path:line``, or ``path`` when PyYAML names no line."""
    line = line_of(exc)
    return f"{path}:{line}" if line is not None else path


def problem(exc: yaml.YAMLError) -> str:
    """What PyYAML says is wrong, in one line."""
    text = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return str(text)
