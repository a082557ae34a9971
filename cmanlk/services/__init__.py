"""corosync's service layer above the ring, one home per service (corosync keeps one file each in exec/).

- `base` — the service-engine interface the Stack drives (corosync's `corosync_service_engine`)
  and the service ids; `wire` — the libqb header and marshalling helpers their messages share;
- `sync` — sync v2, the barrier that runs every service's synchronisation after a ring change;
- `cmap` (service 0), `cfg` (1), `cpg` (2), `votequorum` (5): each package holds the pure state
  machine (`service`), its exec messages (the ones it multicasts on the ring) and, where it has
  one, the library face local programs call.

Everything here is pure: no sockets, clocks or global randomness (tests/unit/test_core_purity.py).
"""
