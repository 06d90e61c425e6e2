"""Test-only plugins for Studio's own test suite (not for users)."""
