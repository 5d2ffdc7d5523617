"""The provider registry: ``providers.json`` (config) + ``provider_secrets.json`` (0600).

Every change is written to disk first and adopted in memory only once the write succeeded, so
a failed write leaves both the files and the running registry as they were.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from comfyvn.core.errors import RefusedError
from comfyvn.net import AddressPolicy, RefusedAddress

from .files import read_json, write_json_atomic
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
        self._providers: dict[str, ProviderSpec] = {}
        self._lock = asyncio.Lock()

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        """Read both files. A damaged file is set aside (never overwritten) and named in the log."""
        self._providers = {}
        try:
            raw = read_json(self.config_path)
        except ValueError as exc:
            self._set_aside(self.config_path, str(exc))
            raw = None
        entries = raw.get("providers", []) if isinstance(raw, dict) else []
        if raw is not None and not isinstance(entries, list):
            self._set_aside(self.config_path, "'providers' is not a list")
            entries = []
        problems: list[str] = []
        for index, entry in enumerate(entries):
            try:
                spec = ProviderSpec.model_validate(entry)
            except ValidationError as exc:
                where = entry.get("id", index) if isinstance(entry, dict) else index
                problems.append(f"entry {where!r}: {errors_of(exc, ())}")
                continue
            self._providers[spec.id] = spec
        if problems:
            backup = self._backup(self.config_path)
            log.warning(
                "%s: skipped %d invalid provider(s); the original is kept as %s: %s",
                self.config_path.name,
                len(problems),
                backup.name,
                "; ".join(problems),
            )
        try:
            self.secrets.load()
        except ValueError as exc:
            self._set_aside(self.secrets.path, str(exc))
            self.secrets.load()
        self.secrets.retain(self._providers)

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
    def get(self, provider_id: str) -> ProviderSpec:
        spec = self._providers.get(provider_id)
        if spec is None:
            raise NotFound(f"no provider with id {provider_id!r}")
        return spec

    def list(self) -> list[ProviderSpec]:
        return list(self._providers.values())

    def is_current(self, spec: ProviderSpec) -> bool:
        """True while ``spec`` is still the stored version (not removed, not changed since)."""
        return self._providers.get(spec.id) is spec

    def scrubber(self) -> Scrubber:
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
    async def create(self, body: ProviderCreate) -> ProviderSpec:
        async with self._lock:
            if body.id is not None and body.id in self._providers:
                raise Conflict(f"a provider with id {body.id!r} already exists")
            spec, values = await self.prepare_create(body)
            await self._commit({**self._providers, spec.id: spec}, spec.id, values)
            log.info("provider %r (%s) added", spec.id, spec.kind)
            return spec

    async def prepare_create(self, body: ProviderCreate) -> tuple[ProviderSpec, dict[str, str]]:
        """The provider ``body`` would create and its secret values, validated and vetted
        exactly as :meth:`create` does, with nothing stored (``POST /api/providers/test``).
        An ``id`` already taken is not refused here; :meth:`create` does that."""
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
            spec, values = await self.prepare_update(provider_id, body)
            await self._commit({**self._providers, spec.id: spec}, spec.id, values)
            log.info("provider %r updated", spec.id)
            return spec

    async def prepare_update(
        self, provider_id: str, body: ProviderUpdate
    ) -> tuple[ProviderSpec, dict[str, str]]:
        """The provider as ``body`` would leave it and its secret values (stored ones kept
        unless replaced or removed), validated and vetted as :meth:`update` does, with nothing
        stored (``POST /api/providers/{id}/test``)."""
        current = self.get(provider_id)
        if body.id is not None and body.id != provider_id:
            raise Invalid(
                [
                    {
                        "loc": ["body", "id"],
                        "msg": f"id {body.id!r} does not match the URL's {provider_id!r}; "
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
        if spec.base_url != current.base_url:  # an unchanged one can still be disabled
            await self._vet_base_url(spec)
        values = self.secrets.names(provider_id)
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
            remaining = {k: v for k, v in self._providers.items() if k != provider_id}
            await self._commit(remaining, provider_id, None)
            log.info("provider %r removed", provider_id)

    def seed(self, specs: list[dict[str, Any]]) -> None:
        """Write a first registry (demo content) synchronously at start-up."""
        providers = {}
        for data in specs:
            spec = self._validate({**data, "created_at": time.time(), "updated_at": time.time()})
            providers[spec.id] = spec
        self._write_config(providers)
        self._providers = providers

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

    def _free_id(self, base: str) -> str:
        candidate, n = base, 2
        while candidate in self._providers or candidate in RESERVED_IDS:
            suffix = f"-{n}"
            candidate = base[: 63 - len(suffix)] + suffix
            n += 1
        return candidate

    async def _commit(
        self,
        providers: dict[str, ProviderSpec],
        provider_id: str,
        secret_values: dict[str, str] | None,
    ) -> None:
        """Secrets first when adding (an orphan secret is dropped on load), config first when
        removing (a provider never points at secrets that are gone)."""
        previous = self.secrets.snapshot()
        staged = self.secrets.staged(provider_id, secret_values)
        secrets_changed = staged != previous
        secrets_written = False
        try:
            if provider_id in providers:
                if secrets_changed:
                    await asyncio.to_thread(self.secrets.commit, staged)
                    secrets_written = True
                await asyncio.to_thread(self._write_config, providers)
            else:
                await asyncio.to_thread(self._write_config, providers)
                if secrets_changed:
                    try:
                        await asyncio.to_thread(self.secrets.commit, staged)
                    except OSError as exc:  # the removal stands; the orphan goes at next load
                        log.warning(
                            "provider %r removed, its secrets not yet: %s", provider_id, exc
                        )
        except OSError as exc:
            log.error("could not save the provider registry: %s", exc)
            if secrets_written:  # best effort: put the old secrets back
                try:
                    await asyncio.to_thread(self.secrets.commit, previous)
                except OSError:
                    log.error("could not restore %s", self.secrets.path.name)
            raise Unavailable(
                f"could not save the provider registry in the data dir ({exc.strerror or exc}); "
                "the change was not applied"
            ) from None
        self._providers = providers

    def _write_config(self, providers: dict[str, ProviderSpec]) -> None:
        payload = {
            "version": 1,
            "providers": [
                spec.model_dump(mode="json", exclude={"thresholds"})
                | {"thresholds": spec.thresholds.model_dump(exclude_none=True)}
                for spec in providers.values()
            ],
        }
        write_json_atomic(self.config_path, payload)
