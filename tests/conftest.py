"""Fixtures every test module sees: the plugins in tests/helpers that define them."""

pytest_plugins = ["tests.helpers.fleets"]
