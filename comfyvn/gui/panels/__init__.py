"""Dockable Studio panels."""
