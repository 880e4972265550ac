"""The test suite (a package, so that `tests.conftest` is ours even when a peer installs a `tests` package)."""
