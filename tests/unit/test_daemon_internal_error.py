"""A bug in the core stops cmanlkd with exit status 4 (internal error), raised as InternalError
by the runtime where it detects the failure, naming the event and the state it happened in."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmanlk import daemon
from cmanlk.stack import Stack
from cmanlk.totem.events import DeadlineReached

from .test_daemon_dlm_exit import run_cmanlkd


def test_a_core_exception_is_an_internal_error_and_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    handle = Stack.handle

    def buggy(self: Stack, event: object) -> list[object]:
        if isinstance(event, DeadlineReached):
            raise RuntimeError("injected bug")
        return handle(self, event)  # type: ignore[arg-type]

    monkeypatch.setattr(Stack, "handle", buggy)
    assert run_cmanlkd(tmp_path, "no") == daemon.EXIT_INTERNAL == 4
    err = capsys.readouterr().err
    expected = "internal error: the core failed: RuntimeError('injected bug') while handling DeadlineReached"
    assert expected in err
    assert "Traceback" in err  # logged once, where the runtime detected it
