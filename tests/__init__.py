"""Test package: makes `tests.support` importable however pytest is started."""
