"""Helpers shared by the tests (drivers, fixtures, subprocess scripts); tests import them
as ``_support.<module>`` (pytest puts tests/ on sys.path for tests/conftest.py)."""
