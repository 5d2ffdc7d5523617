"""Core: hook specs, the hook bus, the event log and settings. Imports nothing above it."""
