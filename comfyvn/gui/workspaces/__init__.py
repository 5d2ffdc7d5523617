"""Central widgets of the Studio's workspaces."""
