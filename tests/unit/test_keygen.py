"""cmanlk-keygen writes a 0400 key file atomically and never overwrites without --force."""

from __future__ import annotations

import stat

import pytest

from cmanlk.config import CmanlkSettings, parse_config
from cmanlk.keygen import DEFAULT_KEY_BYTES, DEFAULT_KEY_PATH, main, write_key_file
from cmanlk.runtime.crypto import load_key_file


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_key_with_mode_0400(tmp_path):
    path = tmp_path / "etc" / "cmanlk" / "authkey"  # parents are created
    assert main(["-k", str(path)]) == 0
    assert mode(path) == 0o400
    assert len(path.read_bytes()) == DEFAULT_KEY_BYTES
    assert load_key_file(path) == path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["authkey"]  # no temporary file left


def test_mode_is_0400_whatever_the_umask(tmp_path):
    import os

    old = os.umask(0o777)
    try:
        write_key_file(tmp_path / "k", 32)
    finally:
        os.umask(old)
    assert mode(tmp_path / "k") == 0o400


def test_length_option_and_bounds(tmp_path, capsys):
    assert main(["-k", str(tmp_path / "a"), "-l", "32"]) == 0
    assert len((tmp_path / "a").read_bytes()) == 32
    assert main(["-k", str(tmp_path / "b"), "--length", "4096"]) == 0
    for bad in ("31", "4097", "many"):
        with pytest.raises(SystemExit) as exc:
            main(["-k", str(tmp_path / "c"), "-l", bad])
        assert exc.value.code == 2
    assert not (tmp_path / "c").exists()
    capsys.readouterr()


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    path = tmp_path / "authkey"
    assert main(["-k", str(path)]) == 0
    first = path.read_bytes()
    assert main(["-k", str(path)]) == 1
    assert "exists" in capsys.readouterr().err
    assert path.read_bytes() == first
    assert main(["-k", str(path), "--force"]) == 0
    assert path.read_bytes() != first
    assert mode(path) == 0o400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["authkey"]


def test_keys_are_random(tmp_path):
    write_key_file(tmp_path / "a", 64)
    write_key_file(tmp_path / "b", 64)
    assert (tmp_path / "a").read_bytes() != (tmp_path / "b").read_bytes()


def test_short_random_source_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        write_key_file(tmp_path / "k", 64, rng_bytes=lambda n: b"\0" * (n - 1))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_directory_reports_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["-k", str(blocker / "authkey")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_keygen_writes_where_the_daemon_reads_by_default():
    # one default for both, corosync's: a knet file without keyfile reads what keygen wrote
    assert DEFAULT_KEY_PATH == "/etc/corosync/authkey"
    assert CmanlkSettings().keyfile == DEFAULT_KEY_PATH
    text = "totem {\n  version: 2\n}\nnodelist {\n  node {\n    ring0_addr: 10.0.0.1\n    nodeid: 1\n  }\n}\n"
    config = parse_config(text)
    assert config.is_crypto_enabled and config.cmanlk.keyfile == DEFAULT_KEY_PATH
