"""``make demo``: the embedded tiny model's config, its sample data and the demo run. Torch-free."""
