"""A minimal Prometheus text exposition (format 0.0.4) registry: counters and gauges.

Parts create their metrics once and update them; ``render()`` is called by the health
endpoint only when something changed (see ``State.generation``).

    >>> reg = Registry()
    >>> removed = reg.counter("wgagent_gc_removed_total", "Peers removed by GC.")
    >>> removed.inc(3)
    >>> print(reg.render(), end="")
    # HELP wgagent_gc_removed_total Peers removed by GC.
    # TYPE wgagent_gc_removed_total counter
    wgagent_gc_removed_total 3
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Labels = tuple[tuple[str, str], ...]
_F = TypeVar("_F", bound="_Family")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Family:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: tuple[str, ...], changed: Callable[[], None]) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = labelnames
        self._values: dict[Labels, float] = {}
        self._changed = changed
        if not labelnames:
            self._values[()] = 0.0

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple((n, labels[n]) for n in self.labelnames)

    def get(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def clear(self) -> None:
        """Drop every labelled series (e.g. before re-setting a gauge per state)."""
        self._values = {} if self.labelnames else {(): 0.0}
        self._changed()

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help}")
        out.append(f"# TYPE {self.name} {self.kind}")
        for labels, value in sorted(self._values.items()):
            if labels:
                text = ",".join(f'{n}="{_escape(v)}"' for n, v in labels)
                out.append(f"{self.name}{{{text}}} {_fmt(value)}")
            else:
                out.append(f"{self.name} {_fmt(value)}")


class Counter(_Family):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount
        self._changed()


class Gauge(_Family):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        if self._values.get(key) != value:
            self._values[key] = float(value)
            self._changed()


class Registry:
    def __init__(self, changed: Callable[[], None] = lambda: None) -> None:
        self._families: dict[str, _Family] = {}
        self._collectors: list[Callable[[list[str]], None]] = []
        self._changed = changed

    def add_collector(self, collect: Callable[[list[str]], None]) -> None:
        """Call ``collect(lines)`` at render time, for series derived from other state."""
        self._collectors.append(collect)

    def counter(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> Counter:
        return self._add(Counter, name, help_text, labelnames)

    def gauge(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> Gauge:
        return self._add(Gauge, name, help_text, labelnames)

    def _add(self, cls: type[_F], name: str, help_text: str, labelnames: tuple[str, ...]) -> _F:
        existing = self._families.get(name)
        if existing is not None:
            # Parts are rebuilt on reload: they get the same family back, values kept.
            if not isinstance(existing, cls) or existing.labelnames != labelnames:
                raise ValueError(f"metric {name} registered twice with different types or labels")
            return existing
        family = cls(name, help_text, labelnames, self._changed)
        self._families[name] = family
        return family

    def render(self) -> str:
        out: list[str] = []
        for family in self._families.values():
            family.render(out)
        for collect in self._collectors:
            collect(out)
        return "\n".join(out) + "\n"
