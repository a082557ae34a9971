"""libqb's connection setup: the request and response structs and the padded abstract names."""

from __future__ import annotations

import socket
import struct

import pytest

from cmanlk.runtime.libqb import setup


def test_the_connection_request_is_libqbs_24_bytes() -> None:
    raw = setup.encode_request(1 << 20)
    assert len(raw) == setup.CONNECTION_REQUEST_SIZE == 24
    assert struct.unpack_from("<i", raw, 0)[0] == setup.MSG_AUTHENTICATE
    assert struct.unpack_from("<i", raw, 8)[0] == 24
    assert setup.decode_request(raw) == setup.ConnectionRequest(-1, 24, 1 << 20)
    with pytest.raises(ValueError):
        setup.decode_request(raw[:23])


def test_the_connection_response_has_the_three_names_at_libqbs_offsets() -> None:
    response = setup.ConnectionResponse(
        0, setup.IPC_SHM, 1 << 20, 77, "/dev/shm/a", "/dev/shm/b", "/dev/shm/c"
    )
    raw = setup.encode_response(response)
    assert len(raw) == setup.CONNECTION_RESPONSE_SIZE == 12_328
    assert struct.unpack_from("<iIq", raw, 24) == (setup.IPC_SHM, 1 << 20, 77)
    assert raw[40:50] == b"/dev/shm/a" and raw[4136:4146] == b"/dev/shm/b" and raw[8232:8242] == b"/dev/shm/c"
    assert setup.decode_response(raw) == response
    refused = setup.decode_response(setup.encode_response(setup.ConnectionResponse(-13)))
    assert refused.error == -13 and refused.request == ""


def test_abstract_names_are_padded_to_the_whole_sun_path() -> None:
    address = setup.abstract_address("cpg")
    assert len(address) == 108 and address.startswith(b"\0cpg\0") and set(address[4:]) == {0}
    with pytest.raises(ValueError):
        setup.abstract_address("x" * 107)


def test_a_padded_name_and_an_unpadded_one_are_different_sockets() -> None:
    name = f"cmanlk-test-{id(object())}"
    server = setup.listen_socket(name, filesystem=False)
    try:
        client = setup.connect_socket(name, filesystem=False)
        client.close()
        plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with pytest.raises(ConnectionRefusedError):
            plain.connect(b"\0" + name.encode())
        plain.close()
    finally:
        server.close()


def test_credentials_come_with_the_first_message() -> None:
    name = f"cmanlk-test-{id(object())}"
    server = setup.listen_socket(name, filesystem=False)
    server.setblocking(True)
    try:
        client = setup.connect_socket(name, filesystem=False)
        conn, _ = server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        client.send(setup.encode_request(1 << 20))
        data, anc, _flags, _addr = conn.recvmsg(24, setup.CMSG_CREDENTIALS_SPACE)
        creds = setup.credentials_from_ancillary(anc)
        assert creds is not None and creds == setup.peer_credentials(conn)
        assert setup.decode_request(data).max_msg_size == 1 << 20
        client.close()
        conn.close()
    finally:
        server.close()
