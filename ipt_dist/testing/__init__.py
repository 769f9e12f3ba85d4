"""Test hooks the production code calls through one function each (no inline `os._exit`)."""
