"""libqb IPC, the local API corosync's client libraries speak (docs/libqb.md).

- `rings` — libqb's shared-memory ring buffers (the SHM channel type), with glibc's
  process-shared semaphores through ctypes; used by the server and by `cmanlk.client.libqb`;
- `setup` — the connection handshake (request, response, abstract socket names, credentials);
- `dgram` — the SOCKET channel type (datagram sockets and the flow-control file);
- `server` — the asyncio server: one listening socket per service, connections, batching,
  flow control, /dev/shm housekeeping;
- `glue` — the node as the services' library faces see it (cmanlk.services.lib.NodeView) over
  a running cmanlk.runtime.node.Node.

Protocol decisions (what a request means, what to answer) live in the pure library faces of
the services (`cmanlk/services/*/lib.py`); this package moves their bytes.
"""
