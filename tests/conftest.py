"""Shared fixtures live in tests/fixtures/, one module per concern."""

pytest_plugins = [
    "tests.fixtures.hostcheck",
    "tests.fixtures.daemon",
    "tests.fixtures.rootfs",
    "tests.fixtures.images",
    "tests.fixtures.zfs",
]
