"""Training configurations: `get_config()` files for ml_collections.config_flags.

The ablations import `configs.paper`; run programs from the repository root.
"""
