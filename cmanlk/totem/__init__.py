"""The Totem single-ring ordering and membership protocol, as a pure (sans-I/O) core."""
