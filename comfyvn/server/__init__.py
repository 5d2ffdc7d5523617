"""The FastAPI server. Never imports Qt: the Studio talks to it over HTTP/WebSocket only."""

from .app import create_app

__all__ = ["create_app"]
