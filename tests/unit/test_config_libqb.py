"""The configuration the libqb IPC reads: system.qb_ipc_type, uidgid {} and uidgid.d, the file tree."""

from __future__ import annotations

import grp
import pwd
from pathlib import Path

import pytest

from cmanlk.config import ConfigSection, UidGid, load_config, parse_config, read_uidgid_dir
from cmanlk.errors import ConfigError

BASE = """\
totem {
  version: 2
  cluster_name: c
  transport: udpu
}
nodelist {
  node {
    ring0_addr: 10.0.0.1
    nodeid: 1
  }
}
quorum {
  provider: corosync_votequorum
}
"""


def test_qb_ipc_type_defaults_to_native_and_takes_corosyncs_three_values() -> None:
    assert parse_config(BASE).qb_ipc_type == "native"
    for kind in ("native", "shm", "socket"):
        assert parse_config(BASE + f"system {{\n  qb_ipc_type: {kind}\n}}\n").qb_ipc_type == kind


def test_an_unknown_qb_ipc_type_is_an_error_with_its_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + "system {\n  qb_ipc_type: posix_mq\n}\n")
    (problem,) = info.value.problems
    assert problem.key == "system.qb_ipc_type" and problem.line == 16


def test_uidgid_takes_numbers_and_names_and_repeated_sections() -> None:
    root_group = grp.getgrgid(0).gr_name
    first = f"uidgid {{\n  uid: 1234\n  gid: {root_group}\n}}\n"
    text = BASE + first + "uidgid {\n  uid: root\n  uid: 1234\n}\n"
    config = parse_config(text)
    assert config.uidgid == UidGid(uids=(1234, 0), gids=(0,))
    assert not [w for w in config.warnings if w.key == "uidgid"]


def test_uidgid_refuses_unknown_names_other_keys_and_subsections() -> None:
    text = BASE + "uidgid {\n  uid: no-such-user-here\n  name: x\n  sub {\n  }\n}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    keys = sorted(p.key for p in info.value.problems)
    assert keys == ["uidgid.name", "uidgid.sub", "uidgid.uid"]


def test_uidgid_d_files_are_merged_by_load_config(tmp_path: Path) -> None:
    (tmp_path / "corosync.conf").write_text(BASE + "uidgid {\n  uid: 1000\n}\n")
    directory = tmp_path / "uidgid.d"
    directory.mkdir()
    (directory / "pacemaker").write_text("uidgid {\n  uid: 2000\n  gid: 3000\n}\n")
    (directory / "other").write_text("uidgid {\n  gid: 3001\n}\n")
    config = load_config(tmp_path / "corosync.conf")
    assert config.uidgid == UidGid(uids=(1000, 2000), gids=(3001, 3000))


def test_a_uidgid_d_file_with_another_section_is_an_error_naming_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "uidgid.d"
    directory.mkdir()
    (directory / "bad").write_text("totem {\n  token: 1\n}\n")
    with pytest.raises(ConfigError) as info:
        read_uidgid_dir(directory)
    (problem,) = info.value.problems
    assert problem.file.endswith("uidgid.d/bad") and problem.line == 1


def test_a_missing_uidgid_d_is_empty(tmp_path: Path) -> None:
    assert read_uidgid_dir(tmp_path / "absent") == UidGid()


def test_the_tree_keeps_every_section_key_and_line_as_written() -> None:
    config = parse_config(BASE + "resources {\n  watchdog_timeout: 6\n}\n")
    names = [s.name for s in config.tree.sections]
    assert names == ["totem", "nodelist", "quorum", "resources"]
    nodelist = config.tree.sections[1]
    (node,) = nodelist.sections
    assert isinstance(node, ConfigSection) and node.name == "node"
    entries = [(e.key, e.value, e.line) for e in node.entries]
    assert entries == [("ring0_addr", "10.0.0.1", 8), ("nodeid", "1", 9)]


def test_uid_of_the_current_user_name_resolves() -> None:
    me = pwd.getpwuid(0).pw_name
    assert parse_config(BASE + f"uidgid {{\n  uid: {me}\n}}\n").uidgid.uids == (0,)
