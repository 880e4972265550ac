"""The audit's stages: pure functions ``(config, inputs) -> artifacts``, no Dask inside."""
