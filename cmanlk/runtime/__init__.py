"""The asyncio runtime of cmanlkd: the driver loop, transports, IPC and D-Bus edges."""
