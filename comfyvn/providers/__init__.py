"""Compute providers: a persisted registry, per-kind adapters and concurrent health/quota checks.

Importing this package is cheap; the server wires it up through :mod:`comfyvn.providers.component`.
"""
