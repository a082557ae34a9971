"""cmanlk: a Linux cluster membership service (Totem SRP, quorum, process groups, DLM glue)."""

__version__ = "0.1.0"
