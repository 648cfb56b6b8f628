"""Following an alias: the served version, and the switch to the version the alias moves to.

The alias is asked every `poll_s` seconds, and at once when the webhook says it moved. A new
version is loaded beside the served one and must answer one request; then the switch is one
assignment (a request takes the version served when it starts and finishes on it), and the
old version is freed once its last request has finished: two versions at most are held. A
version that fails to load leaves the served one serving, and is tried again on the alias's
next move (or when the webhook says the alias was set again), not on every poll.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from genpipe.errors import exception_text
from genpipe.serve.loaded import LoadFailed, Served, load, now

log = logging.getLogger("genpipe.serve")

Loader = Callable[[str], Served]  # version -> the loaded, checked version (or LoadFailed)


class Follower:
    def __init__(self, client: Any, name: str, alias: str, kind: str | None, poll_s: float,
                 loader: Loader | None = None) -> None:  # fmt: skip
        """`kind`: the genpipe model the versions must be (None: the first one's)."""
        self.client, self.name, self.alias, self.kind = client, name, alias, kind
        self.poll_s = poll_s
        self.loader = loader or (lambda version: load(client, name, version, alias, self.kind))
        self.current: Served | None = None
        self._swap = threading.Lock()  # taking `current` and counting the request: one step
        self._wake = threading.Event()
        self._again = False  # the webhook said the alias was set: a failed version is retried
        self._flag = threading.Lock()  # _again: set by the webhook's thread, taken by run()
        self._skip: str | None = None  # the version that failed, until the alias moves on
        self._stop = threading.Event()
        self._moves = threading.Lock()  # one check at a time
        self.state: dict[str, Any] = {"alias": "set", "failed": None, "registry": "answers",
                                      "checked": None, "webhook": "off",
                                      "follow_error": None}  # fmt: skip

    # --- the requests' side -------------------------------------------------------------
    @contextlib.contextmanager
    def serving(self) -> Iterator[Served]:
        """The version served now, held until the request that took it has finished."""
        with self._swap:
            served = self.current
            if served is None:
                raise LookupError("no version is served")
            with served.lock:
                served.inflight += 1
        try:
            yield served
        finally:
            with served.lock:
                served.inflight -= 1
                served.lock.notify_all()

    def health(self) -> dict[str, Any]:
        served = self.current
        return {**(served.describe() if served else {"model": self.name, "alias": self.alias}),
                "alias_state": self.state["alias"], "registry": self.state["registry"],
                "last_failure": self.state["failed"], "checked": self.state["checked"],
                "check_error": self.state["follow_error"],
                "follows": {"poll_s": self.poll_s, "webhook": self.state["webhook"]}}  # fmt: skip

    # --- the alias's side ---------------------------------------------------------------
    def start(self) -> Served:
        """The version the alias names now, loaded; a GenpipeError when there is none."""
        version = self._resolve()
        if version is None and self.state["alias"] == "removed":
            raise LoadFailed(f"{self.name}@{self.alias}: expected a version with the alias "
                             f"in the registry; found none")  # fmt: skip
        if version is None:
            raise LoadFailed(f"{self.name}@{self.alias}: the registry does not answer "
                             f"({self.state['registry']})")  # fmt: skip
        served = self.loader(version)
        served.since = now()
        self.current, self.kind = served, served.kind
        _settle()
        return served

    def nudge(self, again: bool = True) -> None:
        """The webhook's word that the alias moved (or was set again, or removed)."""
        with self._flag:
            self._again = self._again or again
        self._wake.set()

    def run(self) -> None:
        """Follow until stop(): a check every poll_s seconds (from the start of one to the
        next, so the checks themselves do not stretch the period), or at once when nudged."""
        due = time.monotonic() + self.poll_s
        while not self._stop.is_set():
            self._wake.wait(max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                return
            self._wake.clear()
            if time.monotonic() >= due:
                due = max(due + self.poll_s, time.monotonic())
            with self._flag:
                again, self._again = self._again, False
            try:
                self.check(again)
            except Exception as exc:  # noqa: BLE001 (following must outlive any one check)
                self.state["follow_error"] = {"reason": exception_text(exc), "at": now()}
                log.warning("%s@%s: a check of the alias failed (%s); the next one is in "
                            "%g s", self.name, self.alias, exception_text(exc), self.poll_s)
            else:
                self.state["follow_error"] = None

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def check(self, again: bool = False) -> None:
        """Ask the registry where the alias is, and switch to that version if it is another
        one that loads (a version that failed before only when `again`)."""
        with self._moves:
            started = time.monotonic()
            version = self._resolve()
            if version != self._skip:
                self._skip = None  # the alias moved on: the failed version may be tried again
            if version is None or (self.current and version == self.current.version):
                return
            if version == self._skip and not again:
                return
            log.info("%s@%s moved to version %s: loading it beside version %s",
                     self.name, self.alias, version, self.current and self.current.version)
            try:
                served = self.loader(version)
                served.load_s = time.monotonic() - started  # the registry asked, then loaded
            except LoadFailed as exc:
                self._skip = version
                self.state["failed"] = {"version": version, "reason": str(exc), "at": now()}
                log.warning("%s version %s not served (%s); version %s still serves",
                            self.name, version, exc, self.current and self.current.version)
                return
            self.switch(served)

    def switch(self, served: Served) -> None:
        """Serve `served` from the next request on; free the old version once its requests
        have finished."""
        served.since = now()
        with self._swap:
            old, self.current = self.current, served
        self.state["failed"] = None
        log.info("%s version %s serves (@%s; loaded and checked in %.1f s)", self.name,
                 served.version, self.alias, served.load_s)  # fmt: skip
        if old is not None:
            with old.lock:
                old.lock.wait_for(lambda: old.inflight == 0)
            self._free(old)

    @staticmethod
    def _free(old: Served) -> None:
        """Drop the old version now, before another can load. Its references go, and its
        tensors with them; only when something of it is still alive (a reference cycle) does
        the collector walk everything (tens of milliseconds of pause)."""
        alive = weakref.ref(old.model.unwrap_python_model())
        old.model = None
        del old
        if alive() is not None:
            gc.unfreeze()
        _settle()


    def _resolve(self) -> str | None:
        """The version the alias names, or None (the alias removed, the registry not
        answering: the state says which)."""
        from mlflow.exceptions import MlflowException

        from genpipe.tracking.store import brief

        self.state["checked"] = now()
        try:
            version = self.client.get_model_version_by_alias(self.name, self.alias).version
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                self._say_alias("removed")
            else:
                self._say_registry(brief(exc))
            return None
        except Exception as exc:  # noqa: BLE001 (a registry down: keep serving, say so)
            self._say_registry(brief(exc))
            return None
        self._say_registry("answers")
        self._say_alias("set")
        return str(version)

    def _say_alias(self, state: str) -> None:
        if state != self.state["alias"] and self.current is not None:
            log.warning("%s@%s: %s; version %s serves", self.name, self.alias,
                        "no version has the alias now" if state == "removed" else "set again",
                        self.current.version)  # fmt: skip
        self.state["alias"] = state

    def _say_registry(self, state: str) -> None:
        if state != self.state["registry"] and state != "answers":
            log.warning("%s@%s: the registry does not answer (%s); the served version "
                        "stays", self.name, self.alias, state)  # fmt: skip
        elif state != self.state["registry"]:
            log.info("%s@%s: the registry answers again", self.name, self.alias)
        self.state["registry"] = state


def _settle() -> None:
    """Collect what is garbage now (what is frozen is not walked), then freeze the rest: the
    served version's objects are not walked again at each request's collections."""
    gc.collect()
    gc.freeze()
