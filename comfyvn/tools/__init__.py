"""Small standalone tools for modders (``python -m comfyvn.tools.<name>``)."""
