"""The PySide6 Studio. It talks to the server over HTTP/WebSocket only (never imports
``comfyvn.server`` or the component packages) and does all network I/O off the GUI thread."""
