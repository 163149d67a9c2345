"""Serving tests."""
