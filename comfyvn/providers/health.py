"""Concurrent health checks: every provider at once, each bounded by a timeout, so a run costs
about the slowest provider rather than the sum. Keeps the last result per provider and a short
history for the panel's sparkline, persisted (cheaply) in ``provider_status.json``.

Several server processes may share one data dir (``serve --workers N``): each one merges its
results into the file under the registry's cross-process lock (newest last result per provider,
histories joined) and merges in what the others wrote when the file changed, so every worker
shows every worker's checks and none overwrites another's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import traceback
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from comfyvn.net import GuardedTransport, RefusedAddress

from .adapters import adapter_class
from .adapters.base import Outcome, describe_exception
from .config import ProviderSettings
from .files import FileVersion, parse_json, read_versioned, write_json_atomic
from .models import CheckResult, ProviderSpec, Thresholds
from .registry import ProviderRegistry
from .secrets import ERROR_CHARS, REASON_CHARS, ResolvedSecrets, Scrubber, resolve_stored

__all__ = ["Check", "HealthService"]

log = logging.getLogger("comfyvn.providers")

STATUS_FILE = "provider_status.json"


@dataclass(slots=True)
class Check:
    result: CheckResult
    raw: Any = None


class HealthService:
    def __init__(self, registry: ProviderRegistry, settings: ProviderSettings, data_dir: Path):
        self.registry = registry
        self.settings = settings
        self.status_path = data_dir / STATUS_FILE
        self._last: dict[str, CheckResult] = {}
        self._history: dict[str, deque[dict[str, Any]]] = {}
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self._persist_lock = asyncio.Lock()
        self._status_version: FileVersion | None = None  # None: never read

    async def start(self) -> None:
        timeout = self.settings.timeout_s
        # Fresh connections: latency includes connecting, and a pooled connection the
        # provider closed while idle can never turn a healthy provider red.
        limits = httpx.Limits(
            max_connections=self.settings.concurrency * 2, max_keepalive_connections=0
        )
        self._client = httpx.AsyncClient(
            # Every connection is vetted by the server's outbound address policy (comfyvn.net),
            # on the addresses the socket really connects to; no proxy from the environment.
            transport=GuardedTransport(self.registry.policy, limits),
            trust_env=False,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,  # a redirect could carry our Authorization header elsewhere
            headers={"User-Agent": "comfyvn-provider-check"},
        )
        self._sem = asyncio.Semaphore(self.settings.concurrency)
        self._merge_in(*await asyncio.to_thread(self._read_status))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- checks ------------------------------------------------------------------------------
    async def check(self, specs: list[ProviderSpec]) -> list[Check]:
        """Run one check per provider concurrently; results in the order given."""
        scrubber = self.registry.scrubber()
        checks = list(await asyncio.gather(*(self._check_one(s, scrubber) for s in specs)))
        self.registry.refresh()  # a change by another process while the checks ran counts too
        for spec, check in zip(specs, checks, strict=True):
            # A provider removed or changed while its check ran gets no stale "last result".
            if self.registry.is_current(spec):
                self._record(check.result)
        if checks:
            await self._persist()
            counts: dict[str, int] = {}
            for check in checks:
                counts[check.result.status] = counts.get(check.result.status, 0) + 1
            log.info("checked %d provider(s): %s", len(checks), counts)
        return checks

    async def test(self, spec: ProviderSpec, secret_values: dict[str, str]) -> Check:
        """One check of a provider that is not (or not yet in this form) saved: the same
        adapter, timeout, concurrency limit, address policy and scrubbing as every check, with
        ``secret_values`` (literal or ``env:`` references, the stored form) instead of the
        registry's. Runs even when ``spec`` is disabled (it is a test); records nothing."""
        resolved = resolve_stored(secret_values)
        scrubber = Scrubber([*self.registry.secrets.all_values(), *resolved.values.values()])
        check = await self._check_one(spec, scrubber, resolved, even_disabled=True)
        # Defence in depth, as for the registry's views: a key pasted into the name is not echoed.
        check.result.provider_name = scrubber.text(check.result.provider_name)
        log.info(
            "tested provider %r (%s) without saving it: %s (%s)",
            spec.id,
            spec.kind,
            check.result.status,
            check.result.reason_code,
        )
        return check

    async def _check_one(
        self,
        spec: ProviderSpec,
        scrubber: Scrubber,
        secrets: ResolvedSecrets | None = None,
        *,
        even_disabled: bool = False,
    ) -> Check:
        if not spec.enabled and not even_disabled:
            return Check(self._result(spec, Outcome("gray", "disabled", "disabled"), None))
        if secrets is None:
            secrets = self.registry.secrets.resolve(spec.id)
        if secrets.refused:
            refused = "; ".join(
                f"secrets.{name}: {why}" for name, why in sorted(secrets.refused.items())
            )
            # Unresolved like an unset variable, but never read: the reason names the rule.
            outcome = Outcome(
                "red",
                "secret_unresolved",
                f"secret reference refused, not resolved: {refused}",
                error=f"refused env reference: {refused}",
            )
            return Check(self._result(spec, outcome, None))
        if secrets.unresolved:
            missing = ", ".join(
                f"secrets.{name} -> ${var}" for name, var in sorted(secrets.unresolved.items())
            )
            outcome = Outcome(
                "red",
                "secret_unresolved",
                f"environment variable not set in the server's environment: {missing}",
                error=f"unresolved env reference: {missing}",
            )
            return Check(self._result(spec, outcome, None))
        if spec.base_url:
            try:  # stored before the rules changed (or by hand): never contacted
                self.registry.policy.check_url(spec.base_url)
            except RefusedAddress as exc:
                return Check(self._result(spec, _refused(exc), None))
        host = urlsplit(spec.base_url).hostname if spec.base_url else None
        if spec.base_url and not self.settings.host_allowed(host):
            outcome = Outcome(
                "red",
                "host_not_allowed",
                f"host {host!r} is not in COMFYVN_PROVIDER_ALLOW_HOSTS; it was not contacted",
                error="host not allowed",
            )
            return Check(self._result(spec, outcome, None))
        assert self._client is not None and self._sem is not None, "service not started"
        thresholds = Thresholds.effective(spec.thresholds.model_dump(exclude_none=True))
        timeout = self.settings.timeout_s
        adapter = adapter_class(spec.kind)(spec, secrets, self._client, thresholds, timeout)
        async with self._sem:
            started = time.perf_counter()
            try:
                outcome = await asyncio.wait_for(adapter.health(), timeout)
            except RefusedAddress as exc:  # at connect time: the name now resolves elsewhere
                outcome = _refused(exc)
            except Exception as exc:
                outcome = describe_exception(exc, spec.base_url, timeout)
                if outcome.reason_code == "internal_error":
                    text = scrubber.text("".join(traceback.format_exception(exc)))
                    log.error("provider %r check failed unexpectedly:\n%s", spec.id, text)
            latency_ms = round((time.perf_counter() - started) * 1000, 1)
        if outcome.status == "green" and latency_ms > thresholds.latency_amber_ms:
            outcome.status, outcome.reason_code = "amber", "slow"
            outcome.reason = (
                f"slow: {latency_ms:.0f} ms (amber above {thresholds.latency_amber_ms:g} ms); "
                + outcome.reason
            )
        result = self._result(spec, outcome, latency_ms)
        # Scrub everything that came from the network or an exception before anyone sees it;
        # texts are cut only here, after scrubbing (adapters never cut), so no key half remains.
        result.reason = scrubber.clip(result.reason, REASON_CHARS)
        result.error = scrubber.clip(result.error, ERROR_CHARS) if result.error else None
        result.details = scrubber.data(result.details)
        result.quota = scrubber.data(result.quota) if result.quota is not None else None
        raw = scrubber.data(outcome.raw) if outcome.raw is not None else None
        return Check(result, raw)

    @staticmethod
    def _result(spec: ProviderSpec, outcome: Outcome, latency_ms: float | None) -> CheckResult:
        return CheckResult(
            provider_id=spec.id,
            provider_name=spec.name,
            kind=spec.kind,
            enabled=spec.enabled,
            status=outcome.status,
            reason_code=outcome.reason_code,
            reason=outcome.reason,
            checked_at=time.time(),
            latency_ms=latency_ms,
            error=outcome.error,
            details=outcome.details,
            quota=outcome.quota,
        )

    # -- last results and history ------------------------------------------------------------
    def last(self, spec: ProviderSpec) -> CheckResult:
        """The last result, or a gray "never checked" one (disabled wins: it is gray anyway)."""
        self.refresh()
        previous = self._last.get(spec.id)
        if previous is not None and _before(previous.checked_at, spec.created_at):
            previous = None  # a result of an earlier provider with this id
        if not spec.enabled:
            return CheckResult(
                provider_id=spec.id,
                provider_name=spec.name,
                kind=spec.kind,
                enabled=False,
                status="gray",
                reason_code="disabled",
                reason="disabled",
                checked_at=previous.checked_at if previous else None,
            )
        result = previous
        if result is None:
            return CheckResult(
                provider_id=spec.id,
                provider_name=spec.name,
                kind=spec.kind,
                status="gray",
                reason_code="never_checked",
                reason="never checked",
                checked_at=None,
            )
        result.provider_name = spec.name
        return result

    def history(self, provider_id: str) -> list[dict[str, Any]]:
        self.refresh()
        spec = self.registry.known(provider_id)
        since = spec.created_at if spec is not None else 0.0
        return [
            {k: v for k, v in entry.items() if k != _CHECK_ID}  # the id is internal
            for entry in self._history.get(provider_id, ())
            if not _before(entry.get("checked_at"), since)
        ]

    def forget(self, provider_id: str) -> None:
        self._last.pop(provider_id, None)
        self._history.pop(provider_id, None)

    def _record(self, result: CheckResult) -> None:
        self._last[result.provider_id] = result
        history = self._history.setdefault(
            result.provider_id, deque(maxlen=self.settings.history_size)
        )
        history.append(
            {
                "checked_at": result.checked_at,
                "status": result.status,
                "latency_ms": result.latency_ms,
                "reason_code": result.reason_code,
                # Which check this is, for _joined: two workers' checks can share every other
                # field (the same float time.time() tick, same outcome, same rounded latency).
                _CHECK_ID: os.urandom(8).hex(),
            }
        )

    def refresh(self) -> None:
        """Merge in what other processes wrote to the status file since this one last read or
        wrote it: one ``stat`` when nothing changed."""
        version = self._status_version
        if version is not None and version.current(self.status_path):
            return
        try:
            status = self._read_status()
        except OSError as exc:
            log.warning("could not read %s: %s", self.status_path.name, exc)
            return
        self._merge_in(*status)

    async def _persist(self) -> None:
        """Merge this process's results into the file (under the cross-process lock, with the
        file as it is now), then merge the file's into memory."""
        async with self._persist_lock:
            since = {spec.id: spec.created_at for spec in self.registry.list()}
            last = {pid: r for pid, r in self._last.items() if pid in since}
            history = {pid: list(h) for pid, h in self._history.items() if pid in since}
            try:
                status = await asyncio.to_thread(self._write_merged, last, history, since)
            except OSError as exc:  # the results are still served from memory
                log.warning("could not save %s: %s", self.status_path.name, exc)
                return
            self._merge_in(*status)

    def _write_merged(
        self,
        last: dict[str, CheckResult],
        history: dict[str, list[dict[str, Any]]],
        since: dict[str, float],
    ) -> tuple[dict[str, CheckResult], dict[str, list[dict[str, Any]]], FileVersion | None]:
        """In a thread: lock, read the file, merge ``last`` and ``history`` into it (providers
        in ``since`` only, no result from before the provider was created), write, unlock."""
        with self.registry.file_lock:
            file_last, file_history, _ = self._read_status()
            merged_last: dict[str, CheckResult] = {}
            for pid, result in (*file_last.items(), *last.items()):
                if (
                    pid in since
                    and not _before(result.checked_at, since[pid])
                    and _newer(merged_last.get(pid), result)
                ):
                    merged_last[pid] = result
            merged_history: dict[str, list[dict[str, Any]]] = {}
            for pid in since:
                entries = [
                    e
                    for e in (*file_history.get(pid, ()), *history.get(pid, ()))
                    if not _before(e.get("checked_at"), since[pid])
                ]
                if entries:
                    merged_history[pid] = _joined(entries, self.settings.history_size)
            payload = {
                "version": 1,
                "last": {pid: r.to_dict() for pid, r in merged_last.items()},
                "history": merged_history,
            }
            write_json_atomic(self.status_path, payload)
            try:
                version: FileVersion | None = FileVersion.of(self.status_path)
            except OSError:
                version = None
            return merged_last, merged_history, version

    def _read_status(
        self,
    ) -> tuple[dict[str, CheckResult], dict[str, list[dict[str, Any]]], FileVersion]:
        """The status file as it is now; a damaged one reads as empty (named in the log once
        per version of it)."""
        data, version = read_versioned(self.status_path)
        try:
            raw = parse_json(data, self.status_path)
        except ValueError as exc:
            log.warning("ignoring %s: %s", self.status_path.name, exc)
            return {}, {}, version
        if not isinstance(raw, dict):
            return {}, {}, version
        try:
            last = {
                str(pid): CheckResult.from_dict(data)
                for pid, data in (raw.get("last") or {}).items()
            }
            history = {
                str(pid): [dict(e) for e in items if isinstance(e, dict)]
                for pid, items in (raw.get("history") or {}).items()
            }
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            log.warning("ignoring damaged %s: %s", self.status_path.name, exc)
            return {}, {}, version
        return last, history, version

    def _merge_in(
        self,
        last: dict[str, CheckResult],
        history: dict[str, list[dict[str, Any]]],
        version: FileVersion | None,
    ) -> None:
        """On the event loop (where results are recorded): keep the newer last result per
        provider and join the histories; then ``version`` is what this process has seen."""
        for pid, result in last.items():
            if _newer(self._last.get(pid), result):
                self._last[pid] = result
        for pid, entries in history.items():
            mine = self._history.get(pid, ())
            joined = _joined((*mine, *entries), self.settings.history_size)
            self._history[pid] = deque(joined, maxlen=self.settings.history_size)
        previous, self._status_version = self._status_version, version
        if previous is not None and previous is not version:
            previous.close()


def _before(checked_at: Any, created_at: float) -> bool:
    """True for a result taken before its provider was created (an earlier one, same id)."""
    return isinstance(checked_at, int | float) and checked_at < created_at


def _newer(current: CheckResult | None, other: CheckResult) -> bool:
    if current is None:
        return True
    return _time(other.checked_at) > _time(current.checked_at)


def _joined(entries: Iterable[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """History entries without repeats (the same check seen by two processes), oldest first,
    the newest ``size`` of them. A check is known by its id; an entry without one (a file
    written before ids) by its fields."""
    unique: dict[Any, dict[str, Any]] = {}
    for entry in entries:
        check_id = entry.get(_CHECK_ID)
        if check_id is not None:
            key: Any = (_CHECK_ID, check_id)
        else:
            key = tuple(entry.get(name) for name in _HISTORY_FIELDS)
        try:
            unique.setdefault(key, entry)
        except TypeError:  # a hand-edited value that cannot be hashed
            unique.setdefault(json.dumps(entry, sort_keys=True, default=str), entry)
    ordered = sorted(unique.values(), key=lambda e: _time(e.get("checked_at")))
    return ordered[-size:]


_HISTORY_FIELDS = ("checked_at", "status", "latency_ms", "reason_code")
_CHECK_ID = "check_id"  # stored with each history entry (not served): one per check taken


def _time(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _refused(exc: RefusedAddress) -> Outcome:
    """Red without a request: the outbound address policy refused the provider's address."""
    return Outcome(
        "red",
        "refused_address",
        f"address refused by the outbound policy, not contacted: {exc}",
        details={"rule": exc.rule},
        error=f"refused: {exc}",
    )
