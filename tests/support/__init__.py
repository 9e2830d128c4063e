"""Test helpers that run real programs: a private Postfix, pebble and certbot.

Nothing here imports pftls_hook: these helpers are the independent side that
the tests check pftls_hook against.
"""
