"""Text for people: the helpers every command prints with. Times come from ``wgagent.timefmt``.

>>> print("\\n".join(table([("NAME", "STATE", "DETAIL"), ("config", "ok", "loaded")])))
NAME    STATE  DETAIL
config  ok     loaded
"""

from __future__ import annotations

from collections.abc import Sequence


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]).rstrip() for r in rows]
