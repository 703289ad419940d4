"""A torchrun run notices a process that died or hangs: heartbeats in the process group's store.

A collective (``gather_object``, ``all_reduce``) blocks until every rank joins it. When a rank's
process dies, its connections close and the others' collectives fail at once (gloo, NCCL), and on
one node torchrun's agent stops the run within a second. But a rank can also vanish without
closing anything (a node that loses power or network, a stopped or hung process), and the others
would then wait for the process group's timeout — torch's default is 30 minutes. And some waits
are long by design: the ranks that finish their shard early wait for rank 0's model-level checks,
and under ``harden`` the others wait while rank 0 evaluates each epoch.

So robaudit never waits *in* a collective for long work. Before such a collective every rank calls
:meth:`Liveness.wait_all`, which polls the store (a counter per wait, then one per release) while a daemon thread of
every rank bumps its heartbeat counter every :data:`BEAT_SECONDS`; a rank whose counter has not
moved for ``ROBAUDIT_PEER_TIMEOUT`` seconds (default 120, at least 2 beats) is named in a RuntimeFailure (exit 4)
and the run stops. The collective that follows starts with every rank present, so the process
group's own timeout only bounds a rank that hangs *inside* a short collective or step:
``ROBAUDIT_DIST_TIMEOUT`` seconds, default 600 (:func:`dist_timeout`).
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from typing import Any

from .errors import RuntimeFailure, UsageError

__all__ = ["Liveness", "dist_timeout", "peer_timeout", "BEAT_SECONDS"]

BEAT_SECONDS = 2.0  # how often each rank's heartbeat counter moves
_POLL_SECONDS = 0.2  # how often a waiting rank looks at the wait's counter
_CHECK_SECONDS = 5.0  # how often it looks at the others' heartbeats


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UsageError(f"${name} must be a number of seconds > 0, got {raw!r}")
    return value


def dist_timeout() -> timedelta:
    """The process group's collective timeout: ``$ROBAUDIT_DIST_TIMEOUT`` seconds, default 600."""
    return timedelta(seconds=_seconds("ROBAUDIT_DIST_TIMEOUT", 600.0))


def peer_timeout() -> float:
    """Seconds without a heartbeat after which a waited-for rank counts as lost: ``$ROBAUDIT_PEER_TIMEOUT``, default 120."""
    return _seconds("ROBAUDIT_PEER_TIMEOUT", 120.0)


class Liveness:
    """Heartbeats and store-polled waits for one process group (see the module docstring)."""

    def __init__(self, store: Any, rank: int, world: int) -> None:
        self.store, self.rank, self.world = store, rank, world
        self.timeout = max(peer_timeout(), 2 * BEAT_SECONDS)  # a live rank beats at least twice per timeout
        self._waits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="robaudit-heartbeat", daemon=True)
        self._thread.start()

    @classmethod
    def for_process_group(cls, rank: int, world: int) -> Liveness | None:
        """Liveness on the default process group's store (namespaced by torchrun's restart count), or
        None when torch gives no store (then waits are the collectives themselves)."""
        import torch.distributed as dist

        try:
            base = dist.distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - a torch without it: no heartbeats
            return None
        prefix = f"robaudit/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        return cls(dist.PrefixStore(prefix, base), rank, world)

    def _beat(self) -> None:
        key = f"beat/{self.rank}"
        while not self._stop.is_set():
            try:
                self.store.add(key, 1)
            except Exception:  # noqa: BLE001 - the store went away: the run is ending
                return
            self._stop.wait(BEAT_SECONDS)

    def wait_all(self, what: str) -> None:
        """Return once every rank has called ``wait_all`` as often as this one (waits are matched by
        their order) and every rank has seen that; RuntimeFailure naming a rank whose heartbeat
        stopped for ``timeout`` seconds.

        Two phases: *arrive* (a counter per wait), then *acknowledge* the release. A rank that
        arrived early polls for a long time and may stop there; without the acknowledgement the last
        rank to arrive would find the count complete, leave, and block in the next collective with
        the stopped rank (measured: a SIGSTOPped early rank held rank 0 in ``broadcast`` until the
        process group's timeout). A released rank acknowledges within one poll, so the window in
        which a stop still reaches the collective is one poll, not the whole wait."""
        self._waits += 1
        for phase in ("arrived", "released"):
            key = f"wait/{self._waits}/{phase}"
            self.store.add(key, 1)
            self._poll(key, what)

    def _poll(self, key: str, what: str) -> None:
        """Until the store counter ``key`` reaches the world size, checking the others' heartbeats."""
        seen: dict[int, tuple[int, float]] = {}
        next_check = 0.0
        while self.store.add(key, 0) < self.world:
            now = time.monotonic()
            if now >= next_check:
                next_check = now + _CHECK_SECONDS
                for r in range(self.world):
                    if r == self.rank:
                        continue
                    beats = self.store.add(f"beat/{r}", 0)
                    if r not in seen or seen[r][0] != beats:
                        seen[r] = (beats, now)
                    elif now - seen[r][1] > self.timeout:
                        raise RuntimeFailure(
                            f"rank {r} stopped responding: no heartbeat for {now - seen[r][1]:.0f} s while the other "
                            f"ranks waited for it ({what}); its process died or hangs, or its node was lost. Check it, "
                            f"then run again (harden: add --resume). $ROBAUDIT_PEER_TIMEOUT sets the wait "
                            f"({self.timeout:.0f} s)"
                        )
            time.sleep(_POLL_SECONDS)

    def stop(self) -> None:
        self._stop.set()
