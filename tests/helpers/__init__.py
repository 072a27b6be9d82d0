"""What several test modules share, so that no test module imports another.

Functions live in plain modules imported by name. Fixtures live in pytest plugin modules
registered once in ``tests/conftest.py`` (``pytest_plugins``), so every test sees them without
importing them.
"""
