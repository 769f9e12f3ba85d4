"""Test hooks that must run inside production processes (fault injection): production code calls
one function per hook, a no-op unless a test asked for the fault (no inline `os._exit`)."""
