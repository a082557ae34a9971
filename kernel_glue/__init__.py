"""Kernel glue: configfs/sysfs DLM adapters, uevents, netlink and udev watchers."""
