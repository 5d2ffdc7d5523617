"""Provider secrets: stored apart from the config in a 0600 file, shown only masked, and
scrubbed from every error string that could carry them.

A stored value is either the secret itself or a reference ``env:NAME`` resolved at check time,
so a user can keep keys out of the data dir entirely. Only ``COMFYVN_SECRET_*`` variables (and
those listed in ``COMFYVN_SECRET_ENV_ALLOW``) may be named; any other reference is never read.

Text from an upstream is scrubbed whole, then normalised and cut (:meth:`Scrubber.clip`): a cut
made first could leave the head of a key that no scrubber recognises any more.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .files import FileVersion, parse_json, read_versioned, write_json_atomic
from .models import ENV_REF_RE, env_ref_refusal

__all__ = [
    "ERROR_CHARS",
    "REASON_CHARS",
    "REDACTED",
    "ResolvedSecrets",
    "Scrubber",
    "SecretStore",
    "mask_secret",
    "resolve_stored",
]

log = logging.getLogger("comfyvn.providers")

REDACTED = "[redacted]"
HINT_MIN_CHARS = 12  # shorter secrets get no hint: 4 of 8 characters would give half away
SCRUB_MIN_CHARS = 3  # scrubbing 1-2 character "secrets" would mangle every message
# Any run of this many characters of a secret is scrubbed too: an upstream (or a proxy in front
# of it) may echo a key it cut itself, and no whole-value match finds that.
FRAGMENT_CHARS = 8
# clip() reads at most this much of a text (plus the longest secret, so nothing that starts
# inside is cut): collapsing whitespace can pull text from far into a long body into the output.
SCAN_CHARS = 64 * 1024
ECHO_MARGIN = 512  # extra read past SCAN_CHARS for an echoed credential of unknown length
ERROR_CHARS = 240  # a check result's ``error``: "HTTP 500 from /x: " and ~200 of the body
REASON_CHARS = 500  # a check result's ``reason``

# A credential echoed back under its header or field name, in header, query or JSON-ish form:
# ``Authorization: Bearer k``, ``"x-api-key": "k"``, ``\"authorization\":\"Basic k\"``,
# ``api_key=k``. Only the value (group ``v``) is replaced; the name stays readable.
_CREDENTIAL_NAMES = (
    r"(?:proxy-)?authori[sz]ation|x-api-key|api[-_ ]?key|x-auth-token|access[-_]token"
)
_ECHOES = (
    re.compile(
        rf"(?<![a-z0-9_-])(?:{_CREDENTIAL_NAMES})\\?[\"']?\s*[:=]\s*\\?[\"']?\s*"
        r"(?:(?:bearer|basic|token|digest)\s+)?(?P<v>[^\s\"'\\]+)",
        re.IGNORECASE,
    ),
    # A bare "Bearer k": an upstream that quotes the header's value without its name.
    re.compile(r"(?<![a-z0-9_-])bearer\s+(?P<v>[^\s\"'\\]+)", re.IGNORECASE),
)


def mask_secret(stored: str) -> dict[str, Any]:
    """The only form in which a secret leaves the server: never the value, never its length."""
    ref = ENV_REF_RE.fullmatch(stored)
    if ref:
        name = ref.group(1)
        refusal = env_ref_refusal(name)
        if refusal is not None:
            # Never read: the mask must not tell whether a variable outside the rule is set.
            return {
                "set": True,
                "source": "env",
                "env": name,
                "resolved": False,
                "refused": refusal,
            }
        return {"set": True, "source": "env", "env": name, "resolved": bool(os.environ.get(name))}
    hint = "****" + stored[-4:] if len(stored) >= HINT_MIN_CHARS else None
    return {"set": True, "source": "value", "hint": hint}


@dataclass(slots=True)
class ResolvedSecrets:
    """Secret values ready for use in one check, plus the env references that are unset and
    those the reference rule refuses (never read)."""

    values: dict[str, str] = field(default_factory=dict)
    unresolved: dict[str, str] = field(default_factory=dict)  # secret name -> env variable
    refused: dict[str, str] = field(default_factory=dict)  # secret name -> why it is refused

    def get(self, name: str) -> str | None:
        return self.values.get(name)


def resolve_stored(stored: dict[str, str]) -> ResolvedSecrets:
    """Stored secret values (literal, or ``env:NAME`` references) ready for one check: the
    same rule for a registered provider and for one tested before it is saved."""
    resolved = ResolvedSecrets()
    for name, value in stored.items():
        ref = ENV_REF_RE.fullmatch(value)
        if ref is None:
            resolved.values[name] = value
            continue
        refusal = env_ref_refusal(ref.group(1))
        if refusal is not None:  # stored before the rule, or the allow-list shrank
            resolved.refused[name] = refusal
            continue
        variable = os.environ.get(ref.group(1), "")
        if variable:
            resolved.values[name] = variable
        else:
            resolved.unresolved[name] = ref.group(1)
    return resolved


class Scrubber:
    """Removes secrets from text (or nested JSON) before anyone sees it.

    Scrubbed: every known secret value (also JSON-escaped, URL-encoded and with its whitespace
    collapsed; case-insensitive), every run of :data:`FRAGMENT_CHARS` characters of one, and any
    credential echoed under an ``Authorization`` / ``api-key`` / ``x-api-key`` name or after
    ``Bearer``. Each becomes ``[redacted]``.
    """

    def __init__(self, values: Iterable[str]) -> None:
        forms = {form for value in values for form in _forms(value) if len(form) >= SCRUB_MIN_CHARS}
        # Longest first, so a secret containing another is removed whole.
        self._values = [
            re.compile(re.escape(form), re.IGNORECASE)
            for form in sorted(forms, key=len, reverse=True)
        ]
        self._grams = {
            gram
            for form in forms
            for i in range(len(form) - FRAGMENT_CHARS + 1)
            if (gram := form[i : i + FRAGMENT_CHARS].lower()).strip()
        }
        self._longest = max((len(form) for form in forms), default=0)

    def text(self, text: str) -> str:
        """``text`` with every secret, fragment and echoed credential replaced whole."""
        return _apply(text, self._spans(text)) if text else text

    def clip(self, text: str, limit: int) -> str:
        """Scrub, then collapse whitespace, then cut to ``limit`` characters (``...`` marks a cut).

        The order is the point: a cut made first can leave the head of a secret that straddles
        it, which nothing recognises any more. A text longer than :data:`SCAN_CHARS` is read
        that far plus the longest secret, so a secret that starts inside is removed whole."""
        bounded = len(text) > SCAN_CHARS
        if bounded:
            window = text[: SCAN_CHARS + self._longest + ECHO_MARGIN]
            spans = self._spans(window)
            end = max([SCAN_CHARS, *(stop for start, stop in spans if start < SCAN_CHARS)])
            text = _apply(window[:end], [(a, b) for a, b in spans if a < end])
        else:
            text = self.text(text)
        # Collapsing whitespace can join the parts of a secret that has some: scrub again.
        text = self.text(" ".join(text.split()))
        if len(text) <= limit and not bounded:
            return text
        marker = text.find(REDACTED, max(0, limit - len(REDACTED) + 1))
        cut = marker if 0 <= marker < limit else limit  # never half a marker
        return text[:cut] + "..."

    def data(self, data: Any) -> Any:
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, dict):
            return {self.text(str(k)): self.data(v) for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.data(v) for v in data]
        return data

    def _spans(self, text: str) -> list[tuple[int, int]]:
        found = [m.span() for pattern in self._values for m in pattern.finditer(text)]
        if self._grams and len(text) >= FRAGMENT_CHARS:
            low = text.lower()
            if len(low) != len(text):  # a few characters lower into two; keep positions
                low = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
            grams, n = self._grams, FRAGMENT_CHARS
            found.extend((i, i + n) for i in range(len(low) - n + 1) if low[i : i + n] in grams)
        for pattern in _ECHOES:
            found.extend(m.span("v") for m in pattern.finditer(text))
        return found


def _forms(value: str) -> set[str]:
    """The ways a secret can appear in an upstream's text: as is, JSON-escaped (with and
    without ``\\/``), URL-encoded, and with its whitespace collapsed."""
    escaped = json.dumps(value)[1:-1]
    return {
        value,
        escaped,
        escaped.replace("/", "\\/"),
        quote(value, safe=""),
        " ".join(value.split()),
    }


def _apply(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with the (possibly overlapping) spans merged and each replaced by REDACTED."""
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for start, stop in sorted(spans):
        if stop <= pos:
            continue
        if start > pos:
            out.append(text[pos:start])
            out.append(REDACTED)
        elif not out or out[-1] != REDACTED:
            out.append(REDACTED)
        pos = stop
    out.append(text[pos:])
    return "".join(out)


class SecretStore:
    """``provider_secrets.json``: ``{"version": 1, "secrets": {provider_id: {name: value}}}``.

    The registry that owns it takes its cross-process lock around :meth:`commit`; reading needs
    no lock (the file is only ever replaced whole) and :meth:`changed` tells, with one ``stat``,
    whether another process replaced it since it was read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, str]] = {}
        self._version: FileVersion | None = None  # None: never read

    def load(self) -> None:
        if self.path.exists():
            mode = stat.S_IMODE(self.path.stat().st_mode)
            if mode & 0o077:
                os.chmod(self.path, 0o600)
                log.warning("%s was readable by others (mode %o); set it to 0600", self.path, mode)
        data, version = read_versioned(self.path)
        try:
            raw = parse_json(data, self.path)
            if raw is None:
                loaded: dict[str, dict[str, str]] = {}
            else:
                secrets = raw.get("secrets") if isinstance(raw, dict) else None
                if not isinstance(secrets, dict):
                    raise ValueError(f"{self.path.name} has no 'secrets' object")
                loaded = {
                    str(pid): {str(k): v for k, v in entry.items() if isinstance(v, str)}
                    for pid, entry in secrets.items()
                    if isinstance(entry, dict)
                }
        except BaseException:
            version.close()
            raise
        self._data = loaded
        self._adopt_version(version)

    def changed(self) -> bool:
        """True when the file is not (any more) the version last read or written here."""
        return self._version is None or not self._version.current(self.path)

    def _adopt_version(self, version: FileVersion | None) -> None:
        previous, self._version = self._version, version
        if previous is not None:
            previous.close()

    def names(self, provider_id: str) -> dict[str, str]:
        """Stored values (possibly ``env:`` references) for one provider; a copy."""
        return dict(self._data.get(provider_id, {}))

    def masked(self, provider_id: str) -> dict[str, dict[str, Any]]:
        return {name: mask_secret(v) for name, v in sorted(self._data.get(provider_id, {}).items())}

    def resolve(self, provider_id: str) -> ResolvedSecrets:
        return resolve_stored(self._data.get(provider_id, {}))

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
        """Persist ``data`` (0600, atomic), then adopt it; a failed write changes nothing.
        The caller holds the registry's cross-process lock (so the file written is ours)."""
        write_json_atomic(self.path, {"version": 1, "secrets": data}, mode=0o600)
        self._data = data
        try:
            version: FileVersion | None = FileVersion.of(self.path)
        except OSError:
            version = None  # read again on the next look
        self._adopt_version(version)

    def retain(self, provider_ids: Iterable[str]) -> bool:
        """Forget secrets of providers that no longer exist; True when something was dropped."""
        keep = set(provider_ids)
        kept = {pid: entry for pid, entry in self._data.items() if pid in keep}
        dropped = len(kept) != len(self._data)
        self._data = kept  # one assignment: a reader in another thread sees old or new
        return dropped
