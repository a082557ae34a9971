"""votequorum (service 5): `policy` is the pure quorum decision, `service` its exec messages and state."""
