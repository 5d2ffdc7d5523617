"""Provider secrets: stored apart from the config in a 0600 file, shown only masked, and
scrubbed from every error string that could carry them.

A stored value is either the secret itself or a reference ``env:NAME`` resolved at check time,
so a user can keep keys out of the data dir entirely.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import read_json, write_json_atomic
from .models import ENV_REF_RE

__all__ = ["REDACTED", "ResolvedSecrets", "Scrubber", "SecretStore", "mask_secret"]

log = logging.getLogger("comfyvn.providers")

REDACTED = "[redacted]"
HINT_MIN_CHARS = 12  # shorter secrets get no hint: 4 of 8 characters would give half away
SCRUB_MIN_CHARS = 3  # scrubbing 1-2 character "secrets" would mangle every message


def mask_secret(stored: str) -> dict[str, Any]:
    """The only form in which a secret leaves the server: never the value, never its length."""
    ref = ENV_REF_RE.fullmatch(stored)
    if ref:
        name = ref.group(1)
        return {"set": True, "source": "env", "env": name, "resolved": bool(os.environ.get(name))}
    hint = "****" + stored[-4:] if len(stored) >= HINT_MIN_CHARS else None
    return {"set": True, "source": "value", "hint": hint}


@dataclass(slots=True)
class ResolvedSecrets:
    """Secret values ready for use in one check, plus the env references that are unset."""

    values: dict[str, str] = field(default_factory=dict)
    unresolved: dict[str, str] = field(default_factory=dict)  # secret name -> env variable

    def get(self, name: str) -> str | None:
        return self.values.get(name)


class Scrubber:
    """Replaces every known secret value in a text (or nested JSON) with ``[redacted]``."""

    def __init__(self, values: Iterable[str]) -> None:
        # Longest first, so a secret containing another is removed whole.
        self._values = sorted(
            {v for v in values if len(v) >= SCRUB_MIN_CHARS}, key=len, reverse=True
        )

    def text(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def data(self, data: Any) -> Any:
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, dict):
            return {self.text(str(k)): self.data(v) for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.data(v) for v in data]
        return data


class SecretStore:
    """``provider_secrets.json``: ``{"version": 1, "secrets": {provider_id: {name: value}}}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, str]] = {}

    def load(self) -> None:
        if self.path.exists():
            mode = stat.S_IMODE(self.path.stat().st_mode)
            if mode & 0o077:
                os.chmod(self.path, 0o600)
                log.warning("%s was readable by others (mode %o); set it to 0600", self.path, mode)
        raw = read_json(self.path)
        if raw is None:
            self._data = {}
            return
        secrets = raw.get("secrets") if isinstance(raw, dict) else None
        if not isinstance(secrets, dict):
            raise ValueError(f"{self.path.name} has no 'secrets' object")
        self._data = {
            str(pid): {str(k): v for k, v in entry.items() if isinstance(v, str)}
            for pid, entry in secrets.items()
            if isinstance(entry, dict)
        }

    def names(self, provider_id: str) -> dict[str, str]:
        """Stored values (possibly ``env:`` references) for one provider; a copy."""
        return dict(self._data.get(provider_id, {}))

    def masked(self, provider_id: str) -> dict[str, dict[str, Any]]:
        return {name: mask_secret(v) for name, v in sorted(self._data.get(provider_id, {}).items())}

    def resolve(self, provider_id: str) -> ResolvedSecrets:
        resolved = ResolvedSecrets()
        for name, stored in self._data.get(provider_id, {}).items():
            ref = ENV_REF_RE.fullmatch(stored)
            if ref is None:
                resolved.values[name] = stored
                continue
            value = os.environ.get(ref.group(1), "")
            if value:
                resolved.values[name] = value
            else:
                resolved.unresolved[name] = ref.group(1)
        return resolved

    def all_values(self) -> list[str]:
        """Every literal secret and every resolvable env reference, for scrubbing."""
        out: list[str] = []
        for provider_id in self._data:
            out.extend(self.resolve(provider_id).values.values())
        return out

    def snapshot(self) -> dict[str, dict[str, str]]:
        return {pid: dict(entry) for pid, entry in self._data.items()}

    def staged(self, provider_id: str, values: dict[str, str] | None) -> dict[str, dict[str, str]]:
        """A copy of the whole store with one provider's secrets replaced (``None`` removes)."""
        data = self.snapshot()
        if values:
            data[provider_id] = dict(values)
        else:
            data.pop(provider_id, None)
        return data

    def commit(self, data: dict[str, dict[str, str]]) -> None:
        """Persist ``data`` (0600, atomic), then adopt it; a failed write changes nothing."""
        write_json_atomic(self.path, {"version": 1, "secrets": data}, mode=0o600)
        self._data = data

    def retain(self, provider_ids: Iterable[str]) -> bool:
        """Forget secrets of providers that no longer exist; True when something was dropped."""
        keep = set(provider_ids)
        dropped = [pid for pid in self._data if pid not in keep]
        for pid in dropped:
            del self._data[pid]
        return bool(dropped)
