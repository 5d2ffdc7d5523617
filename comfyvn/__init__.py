"""ComfyVN Studio core: the modder hook bus, its REST/WebSocket surface, emitters and Studio."""

__all__ = ["__version__"]

__version__ = "0.1.0"
