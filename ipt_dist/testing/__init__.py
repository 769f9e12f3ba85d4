"""Test aids that must run inside production processes (fault injection), kept out of their code paths."""
