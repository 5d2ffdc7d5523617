"""Talking to a running server from the CLI and the Studio: URL, token, HTTP and streams."""

from .api import ApiClient, ApiError, resolve_connection

__all__ = ["ApiClient", "ApiError", "resolve_connection"]
