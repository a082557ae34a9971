"""The cmanlk-sim command line, on the naive core (fast, and it fails in known ways)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmanlk.sim.cli import main

NAIVE = "tests.sim.naive:naive_factory"


def test_check_prints_failures_with_replay_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["check", "--seeds", "3", "--seed-start", "5", "--jobs", "1", "--core", NAIVE])
    out = capsys.readouterr().out.splitlines()
    assert status == 1
    assert out[-1].startswith("schedules=3 violations=")
    assert any("replay: cmanlk-sim check --seed 5 --nodes 2-7 --faults all" in line for line in out)
    assert any(line.startswith("stats: sent=") for line in out)


def test_check_without_faults_on_clean_network(capsys: pytest.CaptureFixture[str]) -> None:
    main(["check", "--seed", "1", "--nodes", "3", "--faults", "none", "--jobs", "1", "--core", NAIVE, "-v"])
    out = capsys.readouterr().out
    assert "seed 1: nodes=3" in out  # -v prints the schedule


def test_live_demo_runs_fast_when_sped_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["live", "--nodes", "3", "--seconds", "2", "--speed", "1000", "--core", NAIVE]) == 0
    out = capsys.readouterr().out
    assert "stopping node 3" in out and "restarting node 3" in out and "done:" in out


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--faults", "meteor", "--core", NAIVE]) == 2
    assert "unknown fault kinds" in capsys.readouterr().err


def test_stack_check_runs_the_whole_node_and_replays_a_failing_seed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["check", "--stack", "--seeds", "2", "--seed-start", "7", "--jobs", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "schedules=2 violations=0"
    from cmanlk.sim import cli
    from cmanlk.sim.invariants import Violation

    real = cli.run_stack_schedule

    def broken(seed: int, *args: object) -> object:
        res = real(seed, *args)  # type: ignore[arg-type]
        res.violations.append(Violation("dlm-fence", None, "planted"))
        return res

    monkeypatch.setattr(cli, "run_stack_schedule", broken)
    args = ["check", "--stack", "--seed", "7", "--nodes", "3", "--faults", "cpg,crash", "--jobs", "1"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "replay: cmanlk-sim check --seed 7 --stack --nodes 3 --faults cpg,crash --duration 1.5 -v" in out
    assert out.splitlines()[-1] == "schedules=1 violations=1"
    assert main(["check", "--stack", "--faults", "meteor"]) == 2


def test_digests_file_names_each_seeds_run_whatever_the_jobs(tmp_path: Path) -> None:
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    base = ["check", "--stack", "--seeds", "4", "--seed-start", "3"]
    assert main([*base, "--jobs", "1", "--digests", str(one)]) == 0
    assert main([*base, "--jobs", "2", "--digests", str(two)]) == 0
    lines = one.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["seed=3", "seed=4", "seed=5", "seed=6"]
    assert all(len(line.split()[2]) == len("digest=") + 64 for line in lines)
    assert one.read_text() == two.read_text()
    other = tmp_path / "other.txt"
    assert main(["check", "--stack", "--seeds", "4", "--seed-start", "4", "--jobs", "1",
                 "--digests", str(other)]) == 0
    assert other.read_text().splitlines()[:3] == lines[1:]
