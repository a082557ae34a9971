"""The client side of cmanlkd's local API: the Python library, the wire protocol, `cmanlk-tool`.

- `cmanlk.client.api` — `Client` (blocking) and `AsyncClient` (asyncio), re-exported here, so
  `from cmanlk.client import Client` is the import programs use; they only do the I/O of
- `cmanlk.client.connection` — the connection without its socket (request ids, replies, the
  event queue, the pipeline window, the try_again backoff) and the API's operations, pure;
- `cmanlk.client.proto` — the frames both sides speak (docs/ipc.md), pure;
- `cmanlk.client.cli` — `cmanlk-tool`.
"""

from cmanlk.client.api import (
    AsyncClient,
    Client,
    ClientError,
    ConnectionClosed,
    Event,
    SendError,
)

__all__ = ["AsyncClient", "Client", "ClientError", "ConnectionClosed", "Event", "SendError"]
