"""Standard Webhooks signing (https://www.standardwebhooks.com/).

``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``; during a secret
rotation the header carries one signature per live secret, space-separated, so a receiver that
still has the old secret and one that already has the new one both verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable

__all__ = [
    "SECRET_PREFIX",
    "SecretError",
    "generate_secret",
    "mask_secret",
    "parse_secret",
    "signature_header",
    "webhook_headers",
]

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64


class SecretError(ValueError):
    """A client-supplied secret is not a usable ``whsec_`` key."""


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def parse_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; the error never echoes the secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise SecretError(f"secret must start with {SECRET_PREFIX!r} followed by base64")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"secret is not valid base64 after {SECRET_PREFIX!r}") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise SecretError(
            f"secret key must decode to {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes "
            "(Standard Webhooks); generate one by omitting 'secret'"
        )
    return key


def mask_secret(secret: str | None) -> str | None:
    """A hint to tell secrets apart (last 4 characters), never the value or its length."""
    if not secret:
        return None
    return f"{SECRET_PREFIX}****{secret[-4:]}"


def _sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    return " ".join(_sign(key, msg_id, timestamp, body) for key in keys)


def webhook_headers(
    keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(keys, msg_id, timestamp, body),
    }
