"""Helpers for the tests (not test files)."""
