"""cfg (service 1): `service` handles kill, shutdown and reload requests over the ring."""
