"""``PublicIPPart``: every round, ask the sources, decide, adopt, persist, report.

    part = PublicIPPart(state, cfg.public_ip, cfg.state_dir, sources)    # built by the wiring
    part.changed.connect(...)   # the wiring wakes the annotation and k3s parts
    part.adopted()              # PublicAddresses | None: usable at once, from the state file

The adopted address is saved atomically to ``<state_dir>/public_ip.json`` whenever it
changes and loaded at construction, so the k3s drop-in can be written before READY=1
even when discovery is slow or the network is down at boot.

While a new address waits for confirmation, rounds run every ``CONFIRM_INTERVAL_S``
(not ``interval_s``), so a real change is adopted within a minute, not after
``confirmations`` full intervals.

The ``public_ip`` check fails when a round decides nothing (the last adopted address is
kept and named in the detail) or when the adopted address cannot be saved.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from wgagent.config import PublicIPConfig
from wgagent.errors import WriteError
from wgagent.fsutil import load_json, save_json
from wgagent.model import PublicAddresses
from wgagent.part import Part, Signal
from wgagent.publicip.decide import adopt, decide, load_adoption
from wgagent.publicip.model import Adoption, Decision, Observation
from wgagent.publicip.sources import SourceSet, observe_all
from wgagent.state import State
from wgagent.timefmt import iso8601_or_none

log = logging.getLogger(__name__)

STATE_FILE = "public_ip.json"
CONFIRM_INTERVAL_S = 30.0
HINT = "run 'wgagent discover' to see every source's answer, or pin the address with public_ip.static"


class PublicIPPart(Part):
    name = "public_ip"
    checks = ("public_ip",)

    def __init__(
        self,
        state: State,
        cfg: PublicIPConfig,
        state_dir: str,
        sources: SourceSet,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(state)
        self.cfg = cfg
        self.interval_s = cfg.interval_s
        self.changed: Signal[PublicAddresses] = Signal("public_ip.adopted")
        """Emitted after a new address is adopted (the wiring wakes who writes it)."""
        self._clock = clock
        self._monotonic = monotonic
        self._path = os.path.join(state_dir, STATE_FILE)
        self._sources = sources
        self._failing: dict[str, str] = {}
        self._save_error: str | None = None
        metrics = state.metrics
        self._errors = metrics.counter(
            "wgagent_public_ip_source_errors_total", "Public IP source failures, by source.", ("source",)
        )
        self._rounds = metrics.counter(
            "wgagent_public_ip_rounds_total", "Public IP discovery rounds, by result (decided, undecided).", ("result",)
        )
        self._changes = metrics.counter("wgagent_public_ip_changes_total", "Times a new public address was adopted.")
        self._adoption = self._load()
        self._report(None, [], None)

    def adopted(self) -> PublicAddresses | None:
        """The address in use: the last adopted one (from the state file until a round adopts)."""
        return self._adoption.adopted

    async def reconcile(self) -> float | None:
        try:
            observations = await observe_all(self._sources.sources, monotonic=self._monotonic)
        finally:
            await self._sources.end_round()
        now = self._clock()
        self._account(observations)
        decision = decide(observations, quorum=self.cfg.quorum)
        self._rounds.inc(result="decided" if decision.decided else "undecided")
        prev, self._adoption = (
            self._adoption,
            adopt(self._adoption, decision, now, confirmations=self.cfg.confirmations),
        )
        changed = self._adoption.adopted != prev.adopted
        if changed:
            log.info("public address %s -> %s: %s", prev.adopted or "none", self._adoption.adopted, decision.reason)
            self._changes.inc()
        elif self._adoption.candidate is not None:
            log.info(
                "public address %s decided (%d of %d rounds before it replaces %s): %s",
                self._adoption.candidate,
                self._adoption.rounds,
                self.cfg.confirmations,
                self._adoption.adopted,
                decision.reason,
            )
        if changed or self._save_error is not None:
            self._save()
        self._report(decision, observations, now)
        if changed and self._adoption.adopted is not None:
            self.changed.emit(self._adoption.adopted)
        if self._adoption.candidate is not None:  # confirm a new address within a minute or so
            return min(self.cfg.interval_s, CONFIRM_INTERVAL_S)
        return None

    async def close(self) -> None:
        await self._sources.close()

    # --- state file --------------------------------------------------------------------------

    def _load(self) -> Adoption:
        data = load_json(self._path)
        if data is None:
            return Adoption()
        adoption = load_adoption(data)
        if adoption is None:
            log.warning("%s does not hold a valid public address; starting without it", self._path)
            return Adoption()
        log.info("public address %s (adopted before, from %s)", adoption.adopted, self._path)
        return adoption

    def _save(self) -> None:
        data = self._adoption.to_json()
        if data is None:
            return
        try:
            save_json(self._path, data)
        except WriteError as exc:
            if self._save_error != str(exc):
                log.error("cannot save the adopted public address: %s", exc)
            self._save_error = str(exc)
        else:
            self._save_error = None

    # --- reporting ----------------------------------------------------------------------------

    def _account(self, observations: Sequence[Observation]) -> None:
        """Count every failure; log a source's failure when it starts or changes, and recovery."""
        failing = {o.source: o.error for o in observations if o.error is not None}
        for source, error in failing.items():
            self._errors.inc(source=source)
            if self._failing.get(source) != error:
                log.warning("public IP source %s: %s", source, error)
        for source in self._failing.keys() - failing.keys():
            log.info("public IP source %s answers again", source)
        self._failing = failing

    def _report(self, decision: Decision | None, observations: Sequence[Observation], now: float | None) -> None:
        a = self._adoption
        section: dict[str, Any] = {
            "adopted": None if a.adopted is None else {"ipv4": _s(a.adopted.ipv4), "ipv6": _s(a.adopted.ipv6)},
            "since": iso8601_or_none(a.since),
            "pending": None
            if a.candidate is None
            else {
                "ipv4": _s(a.candidate.ipv4),
                "ipv6": _s(a.candidate.ipv6),
                "rounds": a.rounds,
                "needed": self.cfg.confirmations,
            },
            "decision": None if decision is None else decision.to_json(),
            "observations": [o.to_json() for o in observations],
            "last_round": iso8601_or_none(now),
        }
        self.state.set_part(self.name, section)
        if decision is not None:
            ok, detail = self._check(decision, observations)
            self.state.set_check("public_ip", ok, detail)

    def _check(self, decision: Decision, observations: Sequence[Observation]) -> tuple[bool, str]:
        a = self._adoption
        if not decision.decided:
            failed = [o for o in observations if o.error is not None]
            if not self._sources.sources:
                why = "no source is enabled (public_ip.sources is empty) and public_ip.static is not set"
            elif failed:
                asked = len({o.source for o in observations})
                why = f"{len(failed)} of {asked} sources failed (first: {failed[0].source}: {failed[0].error}); "
                why += decision.reason
            else:
                why = decision.reason
            if a.adopted is not None:
                return False, f"no public address decided this round: {why}; keeping {a.adopted} (adopted " + (
                    f"{iso8601_or_none(a.since)}); {HINT}"
                )
            return False, f"no public address known: {why}; {HINT}"
        if self._save_error is not None:
            return False, f"{a.adopted} adopted but not saved ({self._save_error}); make state_dir writable"
        if a.candidate is not None:
            return True, (
                f"using {a.adopted}; {a.candidate} decided {a.rounds} of {self.cfg.confirmations} rounds needed "
                f"to replace it: {decision.reason}"
            )
        return True, f"using {a.adopted}; {decision.reason}"


def _s(value: object | None) -> str | None:
    return None if value is None else str(value)
