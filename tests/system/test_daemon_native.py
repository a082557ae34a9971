"""cmanlkd with `transport: knet` (our native, encrypted transport) in network namespaces."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from tests.system.conftest import Cluster

pytestmark = pytest.mark.system

CRYPTO = "  crypto_cipher: aes256\n  crypto_hash: sha256\n"


def keyed_cluster(factory: Callable[..., Cluster], nodes: list[int]) -> Cluster:
    c = factory(nodes, totem_extra=CRYPTO)
    key = c.workdir / "authkey"
    c.lab.run(nodes[0], sys.executable, "-m", "cmanlk.keygen", "-k", str(key))
    for n in nodes:
        text = c.conf_path(n).read_text().replace("transport: udpu", "transport: knet")
        text = text.replace("cmanlk {\n", f"cmanlk {{\n  keyfile: {key}\n")
        c.conf_path(n).write_text(text)
    return c


def test_native_encrypted_ring_forms_and_survives_a_kill(cluster_factory: Callable[..., Cluster]) -> None:
    c = keyed_cluster(cluster_factory, [1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3], timeout_s=20.0)
    link = c.status(1)["links"][0]  # type: ignore[index]
    assert link["up"] and {p["node"] for p in link["peers"]} == {2, 3}
    c.kill(3)
    took = c.wait_ring([1, 2], timeout_s=10.0)
    assert took < 3.0
