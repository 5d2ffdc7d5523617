"""One router module per surface; the app factory includes them in ``ROUTERS`` order."""
