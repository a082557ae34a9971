"""cmap (service 0): `service` is its sync (config_version agreement) over the ring."""
