"""The provider registry: ``providers.json`` (config) + ``provider_secrets.json`` (0600).

Every change is written to disk first and adopted in memory only once the write succeeded, so
a failed write leaves both the files and the running registry as they were.

Several server processes may share one data dir (``serve --workers N``, DESIGN.md 12). Every
change takes a cross-process lock (``.providers.lock``), reads both files again, applies itself
to what it read, writes atomically and lets go: two processes never lose each other's change.
Reads take no lock: each read checks the files (one stat each) and reads them again when
another process replaced one, so a provider added through one worker is listed by every worker
at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from comfyvn.core.errors import RefusedError
from comfyvn.core.file_lock import FileLock
from comfyvn.net import AddressPolicy, RefusedAddress

from .files import FileVersion, parse_json, read_versioned, write_json_atomic
from .models import (
    QUOTA_KINDS,
    RESERVED_IDS,
    MaskedSecret,
    ProviderCreate,
    ProviderSpec,
    ProviderUpdate,
    Thresholds,
    slugify,
)
from .secrets import Scrubber, SecretStore

__all__ = [
    "Conflict",
    "Invalid",
    "NotFound",
    "ProviderRegistry",
    "RegistryError",
    "Unavailable",
    "errors_of",
]

log = logging.getLogger("comfyvn.providers")

CONFIG_FILE = "providers.json"
SECRETS_FILE = "provider_secrets.json"
LOCK_FILE = ".providers.lock"  # held while any process changes the files above (or the status)

# What a change computes from the registry it read under the lock: the new set of providers,
# the provider it is about, that provider's secret values (None removes them) and the result.
_Change = Callable[
    [dict[str, ProviderSpec]],
    tuple[dict[str, ProviderSpec], str, dict[str, str] | None, Any],
]


class RegistryError(RefusedError):
    status = 400


class NotFound(RegistryError):
    status = 404


class Conflict(RegistryError):
    status = 409


class Invalid(RegistryError):
    status = 422


class Unavailable(RegistryError):
    status = 503


class _NeedsRepair(Exception):
    """A file read without the lock is damaged: set it aside under the lock instead."""


def errors_of(exc: ValidationError, prefix: tuple[str | int, ...] = ("body",)) -> list[dict]:
    """Validation errors without the offending input (it may be a secret)."""
    return [
        {"loc": [*prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


class ProviderRegistry:
    def __init__(self, data_dir: Path, policy: AddressPolicy | None = None) -> None:
        """``policy``: the server's shared outbound address policy (the defaults without one)."""
        self.policy = policy or AddressPolicy()
        self.config_path = data_dir / CONFIG_FILE
        self.secrets = SecretStore(data_dir / SECRETS_FILE)
        # Across processes and threads: held by every change of the providers' files.
        self.file_lock = FileLock(data_dir / LOCK_FILE)
        self._providers: dict[str, ProviderSpec] = {}
        self._config_version: FileVersion | None = None  # None: never read
        self._lock = asyncio.Lock()  # one change of this process at a time, without a thread each
        # Held while this process replaces what it holds in memory: a read that finds it taken
        # serves what it has (the change in progress leaves memory current) instead of waiting.
        self._memory = threading.Lock()

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        """Read both files. A damaged file is set aside (never overwritten) and named in the log."""
        with self.file_lock, self._memory:
            self._read(repair=True)

    def refresh(self) -> None:
        """Adopt what other processes wrote since this one last read: one ``stat`` per file
        when nothing changed. Never waits for a change in progress in this process."""
        if not self._stale():
            return
        if not self._memory.acquire(blocking=False):
            return
        try:
            if not self._stale():
                return
            try:
                self._read(repair=False)
                return
            except _NeedsRepair:
                pass  # below, under the lock, without holding _memory (lock order)
            except OSError as exc:
                log.warning("could not read the provider registry again: %s", exc)
                return
        finally:
            self._memory.release()
        try:
            self.load()
        except OSError as exc:  # e.g. no lock file in a data dir gone read-only
            log.warning("could not read the provider registry again: %s", exc)

    def _stale(self) -> bool:
        version = self._config_version
        return version is None or not version.current(self.config_path) or self.secrets.changed()

    def _read(self, *, repair: bool) -> None:
        """Both files into memory, config first: a provider's secrets are written before it is
        added and removed after it is, so a provider read is never without its secrets.
        ``repair``: the caller holds the lock, damage is set aside; otherwise it raises
        :class:`_NeedsRepair`."""
        data, version = read_versioned(self.config_path)
        try:
            providers, version = self._parse_config(data, version, repair)
            try:
                self.secrets.load()
            except ValueError as exc:
                if not repair:
                    raise _NeedsRepair from None
                self._set_aside(self.secrets.path, str(exc))
                self.secrets.load()
        except BaseException:
            version.close()
            raise
        self.secrets.retain(providers)
        self._adopt(providers, version)

    def _parse_config(
        self, data: bytes | None, version: FileVersion, repair: bool
    ) -> tuple[dict[str, ProviderSpec], FileVersion]:
        try:
            raw = parse_json(data, self.config_path)
        except ValueError as exc:
            if not repair:
                raise _NeedsRepair from None
            self._set_aside(self.config_path, str(exc))
            version.close()
            raw, version = None, FileVersion()
        entries = raw.get("providers", []) if isinstance(raw, dict) else []
        if raw is not None and not isinstance(entries, list):
            if not repair:
                raise _NeedsRepair
            self._set_aside(self.config_path, "'providers' is not a list")
            version.close()
            entries, version = [], FileVersion()
        providers: dict[str, ProviderSpec] = {}
        problems: list[str] = []
        for index, entry in enumerate(entries):
            try:
                spec = ProviderSpec.model_validate(entry)
            except ValidationError as exc:
                where = entry.get("id", index) if isinstance(entry, dict) else index
                problems.append(f"entry {where!r}: {errors_of(exc, ())}")
                continue
            providers[spec.id] = spec
        if problems:
            if not repair:
                raise _NeedsRepair
            backup = self._backup(self.config_path)
            log.warning(
                "%s: skipped %d invalid provider(s); the original is kept as %s: %s",
                self.config_path.name,
                len(problems),
                backup.name,
                "; ".join(problems),
            )
        return providers, version

    def _adopt(self, providers: dict[str, ProviderSpec], version: FileVersion | None) -> None:
        """Make ``providers`` (read or written as ``version``) the registry. An unchanged
        provider keeps its object: :meth:`is_current` stays true for it."""
        old = self._providers
        self._providers = {
            pid: old[pid] if old.get(pid) == spec else spec for pid, spec in providers.items()
        }
        previous, self._config_version = self._config_version, version
        if previous is not None:
            previous.close()

    def _backup(self, path: Path) -> Path:
        backup = path.with_name(f"{path.name}.bad-{int(time.time())}")
        shutil.copy2(path, backup)
        return backup

    def _set_aside(self, path: Path, problem: str) -> None:
        backup = path.with_name(f"{path.name}.bad-{int(time.time())}")
        os.replace(path, backup)
        log.error("%s: %s; moved it to %s and started without it", path.name, problem, backup.name)

    @property
    def exists(self) -> bool:
        """True once a registry was ever saved here (the demo never overwrites one)."""
        return self.config_path.exists()

    # -- reading -----------------------------------------------------------------------------
    # get, list and scrubber first adopt what other processes wrote (see refresh).
    def get(self, provider_id: str) -> ProviderSpec:
        self.refresh()
        spec = self._providers.get(provider_id)
        if spec is None:
            raise NotFound(f"no provider with id {provider_id!r}")
        return spec

    def list(self) -> list[ProviderSpec]:
        self.refresh()
        return list(self._providers.values())

    def known(self, provider_id: str) -> ProviderSpec | None:
        """The provider as this process last read it (no ``stat``), or None."""
        return self._providers.get(provider_id)

    def is_current(self, spec: ProviderSpec) -> bool:
        """True while ``spec`` is still the stored version (not removed, not changed since)."""
        return self._providers.get(spec.id) is spec

    def scrubber(self) -> Scrubber:
        self.refresh()
        return Scrubber(self.secrets.all_values())

    def describe(self, spec: ProviderSpec, scrubber: Scrubber | None = None) -> dict[str, Any]:
        """The masked public view of a provider: secrets as ``{set, hint}`` only."""
        overrides = spec.thresholds.model_dump(exclude_none=True)
        view = {
            "id": spec.id,
            "name": spec.name,
            "kind": spec.kind,
            "base_url": spec.base_url,
            "enabled": spec.enabled,
            "config": spec.config,
            "thresholds": Thresholds.effective(overrides).as_dict(),
            "threshold_overrides": overrides,
            "secrets": self.secrets.masked(spec.id),
            "supports_quota": spec.kind in QUOTA_KINDS,
            "created_at": spec.created_at,
            "updated_at": spec.updated_at,
        }
        # Defence in depth: a key pasted into a free-form config field is still not echoed.
        return (scrubber or self.scrubber()).data(view)

    # -- changing ----------------------------------------------------------------------------
    # Each change is checked and vetted on what this process holds, then applied again under
    # the cross-process lock to the files as they are now (_transact): what another process
    # changed in between is kept, and a conflict it created is refused.
    async def create(self, body: ProviderCreate) -> ProviderSpec:
        async with self._lock:
            self.refresh()
            if body.id is not None and body.id in self._providers:
                raise Conflict(f"a provider with id {body.id!r} already exists")
            prepared, values = await self.prepare_create(body)

            def change(providers: dict[str, ProviderSpec]) -> Any:
                spec = prepared
                if spec.id in providers:  # taken by another process meanwhile
                    if body.id is not None:
                        raise Conflict(f"a provider with id {body.id!r} already exists")
                    free = self._free_id(slugify(body.name or ""), providers)
                    spec = self._validate({**spec.model_dump(), "id": free})
                return {**providers, spec.id: spec}, spec.id, values, spec

            spec = await asyncio.to_thread(self._transact, change)
            log.info("provider %r (%s) added", spec.id, spec.kind)
            return spec

    async def prepare_create(self, body: ProviderCreate) -> tuple[ProviderSpec, dict[str, str]]:
        """The provider ``body`` would create and its secret values, validated and vetted
        exactly as :meth:`create` does, with nothing stored (``POST /api/providers/test``).
        An ``id`` already taken is not refused here; :meth:`create` does that."""
        self.refresh()
        provider_id = body.id or self._free_id(slugify(body.name or ""))
        now = time.time()
        data = body.model_dump(exclude={"secrets"})
        data.update(id=provider_id, name=body.name or provider_id)
        data.update(created_at=now, updated_at=now)
        spec = self._validate(data)
        await self._vet_base_url(spec)
        return spec, {k: v for k, v in body.secrets.items() if isinstance(v, str)}

    async def update(self, provider_id: str, body: ProviderUpdate) -> ProviderSpec:
        async with self._lock:
            await self.prepare_update(provider_id, body)

            def change(providers: dict[str, ProviderSpec]) -> Any:
                current = providers.get(provider_id)
                if current is None:  # removed by another process meanwhile
                    raise NotFound(f"no provider with id {provider_id!r}")
                spec, values = self._updated(current, self.secrets.names(provider_id), body)
                return {**providers, spec.id: spec}, spec.id, values, spec

            spec = await asyncio.to_thread(self._transact, change)
            log.info("provider %r updated", spec.id)
            return spec

    async def prepare_update(
        self, provider_id: str, body: ProviderUpdate
    ) -> tuple[ProviderSpec, dict[str, str]]:
        """The provider as ``body`` would leave it and its secret values (stored ones kept
        unless replaced or removed), validated and vetted as :meth:`update` does, with nothing
        stored (``POST /api/providers/{id}/test``)."""
        current = self.get(provider_id)
        spec, values = self._updated(current, self.secrets.names(provider_id), body)
        if spec.base_url != current.base_url:  # an unchanged one can still be disabled
            await self._vet_base_url(spec)
        return spec, values

    def _updated(
        self, current: ProviderSpec, stored: dict[str, str], body: ProviderUpdate
    ) -> tuple[ProviderSpec, dict[str, str]]:
        """``body`` applied to ``current`` and its ``stored`` secret values (validated, not
        vetted)."""
        if body.id is not None and body.id != current.id:
            raise Invalid(
                [
                    {
                        "loc": ["body", "id"],
                        "msg": f"id {body.id!r} does not match the URL's {current.id!r}; "
                        "ids cannot be changed",
                        "type": "value_error",
                    }
                ]
            )
        data = current.model_dump()
        for name in body.model_fields_set - {"id", "secrets"}:
            value = getattr(body, name)
            if name == "thresholds":
                value = value.model_dump(exclude_none=True) if value is not None else {}
            elif name == "config" and value is None:
                value = {}
            if value is None and name in ("name", "kind", "enabled"):
                continue  # null for a required field means "leave it"
            data[name] = value
        data["updated_at"] = time.time()
        spec = self._validate(data)
        values = dict(stored)
        for name, secret in body.secrets.items():
            if isinstance(secret, str):
                values[name] = secret
            elif secret is None or (isinstance(secret, MaskedSecret) and not secret.set):
                values.pop(name, None)
            # a masked value sent back unchanged keeps the stored secret
        return spec, values

    async def delete(self, provider_id: str) -> None:
        async with self._lock:
            self.get(provider_id)

            def change(providers: dict[str, ProviderSpec]) -> Any:
                if provider_id not in providers:  # removed by another process meanwhile
                    raise NotFound(f"no provider with id {provider_id!r}")
                remaining = {k: v for k, v in providers.items() if k != provider_id}
                return remaining, provider_id, None, None

            await asyncio.to_thread(self._transact, change)
            log.info("provider %r removed", provider_id)

    def seed(self, specs: list[dict[str, Any]]) -> bool:
        """Write a first registry (demo content) synchronously at start-up, unless one exists.
        Decided under the cross-process lock, so N workers starting at once write it once;
        True when this call wrote it."""
        with self.file_lock, self._memory:
            if self.exists:
                self._read(repair=True)
                return False
            providers = {}
            for data in specs:
                spec = self._validate(
                    {**data, "created_at": time.time(), "updated_at": time.time()}
                )
                providers[spec.id] = spec
            self._write_config(providers)
            return True

    def _validate(self, data: dict[str, Any]) -> ProviderSpec:
        try:
            return ProviderSpec.model_validate(data)
        except ValidationError as exc:
            raise Invalid(errors_of(exc)) from None

    async def _vet_base_url(self, spec: ProviderSpec) -> None:
        """The outbound address policy at creation: a refused ``base_url`` (cloud metadata,
        link-local, unspecified... in any spelling, or by the current DNS answer) is a 422 that
        names the rule. Every check connects through the same policy again (DNS can change)."""
        if spec.base_url is None:
            return
        try:
            await self.policy.check_url_resolved(spec.base_url)
        except RefusedAddress as exc:
            raise Invalid(
                [
                    {
                        "loc": ["body", "base_url"],
                        "msg": f"base_url refused: {exc}",
                        "type": "value_error",
                    }
                ]
            ) from None

    def _free_id(self, base: str, providers: dict[str, ProviderSpec] | None = None) -> str:
        taken = self._providers if providers is None else providers
        candidate, n = base, 2
        while candidate in taken or candidate in RESERVED_IDS:
            suffix = f"-{n}"
            candidate = base[: 63 - len(suffix)] + suffix
            n += 1
        return candidate

    def _transact(self, change: _Change) -> Any:
        """In a thread: lock, read both files again, apply ``change`` to what was read, write,
        unlock. Returns what ``change`` returned."""
        try:
            self.file_lock.acquire()
        except OSError as exc:
            raise self._unavailable(exc) from None
        try:
            with self._memory:
                try:
                    self._read(repair=True)
                except OSError as exc:
                    raise self._unavailable(exc) from None
                providers, provider_id, values, result = change(dict(self._providers))
                self._commit(providers, provider_id, values)
                return result
        finally:
            self.file_lock.release()

    @staticmethod
    def _unavailable(exc: OSError) -> Unavailable:
        log.error("could not save the provider registry: %s", exc)
        return Unavailable(
            f"could not save the provider registry in the data dir ({exc.strerror or exc}); "
            "the change was not applied"
        )

    def _commit(
        self,
        providers: dict[str, ProviderSpec],
        provider_id: str,
        secret_values: dict[str, str] | None,
    ) -> None:
        """Secrets first when adding (an orphan secret is dropped on load), config first when
        removing (a provider never points at secrets that are gone). Under the lock, with the
        files just read."""
        previous = self.secrets.snapshot()
        staged = self.secrets.staged(provider_id, secret_values)
        secrets_changed = staged != previous
        secrets_written = False
        try:
            if provider_id in providers:
                if secrets_changed:
                    self.secrets.commit(staged)
                    secrets_written = True
                self._write_config(providers)
            else:
                self._write_config(providers)
                if secrets_changed:
                    try:
                        self.secrets.commit(staged)
                    except OSError as exc:  # the removal stands; the orphan goes at next load
                        log.warning(
                            "provider %r removed, its secrets not yet: %s", provider_id, exc
                        )
        except OSError as exc:
            if secrets_written:  # best effort: put the old secrets back
                try:
                    self.secrets.commit(previous)
                except OSError:
                    log.error("could not restore %s", self.secrets.path.name)
            raise self._unavailable(exc) from None

    def _write_config(self, providers: dict[str, ProviderSpec]) -> None:
        """Write ``providers`` and adopt them (the caller holds the lock); a failed write
        changes nothing."""
        payload = {
            "version": 1,
            "providers": [
                spec.model_dump(mode="json", exclude={"thresholds"})
                | {"thresholds": spec.thresholds.model_dump(exclude_none=True)}
                for spec in providers.values()
            ],
        }
        write_json_atomic(self.config_path, payload)
        try:
            version: FileVersion | None = FileVersion.of(self.config_path)
        except OSError:
            version = None  # read again on the next look
        self._adopt(providers, version)
