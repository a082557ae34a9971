"""The benchmark's pure parts: statistics, comparisons against the targets, the result layout."""

from __future__ import annotations

import json

import pytest

from bench import stats


def test_percentile_uses_nearest_rank():
    data = list(range(1, 101))
    assert stats.percentile(data, 0.5) == 50
    assert stats.percentile(data, 0.99) == 99
    assert stats.percentile(data, 1.0) == 100
    assert stats.percentile([7], 0.99) == 7
    assert stats.percentile([], 0.5) is None
    with pytest.raises(ValueError):
        stats.percentile(data, 1.5)


def test_median_of_odd_and_even_counts():
    assert stats.median([3, 1, 2]) == 2
    assert stats.median([4, 1, 3, 2]) == 2.5
    assert stats.median([]) is None


def test_rate_counts_intervals_between_first_and_last_delivery():
    assert stats.rate_per_s(1001, 0, 1_000_000_000) == pytest.approx(1000.0)
    assert stats.rate_per_s(1, 0, 10) is None
    assert stats.rate_per_s(5, 10, 10) is None


def test_ratio_is_none_without_both_values():
    assert stats.ratio(2.0, 4.0) == 0.5
    assert stats.ratio(None, 4.0) is None
    assert stats.ratio(2.0, 0.0) is None


def test_targets_follow_the_issue():
    t64 = stats.TARGETS["throughput.1sender.64.msgs_per_s"]
    assert t64.met(None, 1.0) is True and t64.met(None, 0.99) is False
    assert stats.TARGETS["throughput.allsenders.65536.msgs_per_s"].met(None, 0.5) is False
    assert stats.TARGETS["throughput.allsenders.16384.msgs_per_s"].met(None, 1.0) is True
    assert stats.TARGETS["latency.p50_us"].met(None, 1.1) is False
    assert stats.TARGETS["latency.p50_us"].met(None, 1.0) is True
    assert stats.TARGETS["reform.median_s"].met(None, 1.0) is True
    assert stats.TARGETS["failover.gap_ms"].met(99.0, None) is True
    assert stats.TARGETS["failover.gap_ms"].met(150.0, None) is False
    assert stats.TARGETS["rss.max_mib"].met(None, None) is None


def _doc() -> dict:
    cmk = {"throughput.1sender.64.msgs_per_s": 5000.0, "latency.p50_us": 400.0, "rss.max_mib": 50.0}
    coro = {"throughput.1sender.64.msgs_per_s": 10000.0, "latency.p50_us": 300.0, "rss.max_mib": 30.0}
    return {
        "schema": stats.SCHEMA,
        "started_at": "2026-11-25T09:00:00+00:00",
        "host": {"nproc": 2},
        "settings": {"nodes": 3},
        "systems": {
            "corosync-udpu": {"status": "ok", "figures": coro, "details": {}},
            "cmanlk-udpu": {"status": "ok", "figures": cmk, "details": {}},
        },
        "comparisons": stats.compare(cmk, coro, "cmanlk-udpu", "corosync-udpu"),
    }


def test_compare_gives_ratio_cmanlk_over_corosync_and_target_verdicts():
    rows = {r["figure"]: r for r in _doc()["comparisons"]}
    tp = rows["throughput.1sender.64.msgs_per_s"]
    assert tp["ratio"] == 0.5 and tp["met"] is False and tp["target"] == ">= 1x"
    lat = rows["latency.p50_us"]
    assert lat["ratio"] == pytest.approx(4 / 3) and lat["met"] is False
    assert rows["rss.max_mib"]["met"] is True
    assert rows["reform.median_s"]["ratio"] is None and rows["reform.median_s"]["met"] is None
    assert set(rows) == set(stats.figure_names())


def test_result_document_round_trips_through_json_and_validates():
    doc = json.loads(json.dumps(_doc()))
    assert stats.validate_result(doc) == []


def test_validate_reports_every_problem():
    doc = _doc()
    doc["schema"] = "other"
    doc["systems"]["cmanlk-udpu"]["status"] = "great"
    doc["systems"]["cmanlk-udpu"]["figures"]["made.up"] = 1.0
    doc["systems"]["corosync-udpu"]["figures"]["latency.p50_us"] = "fast"
    del doc["comparisons"][0]["ratio"]
    problems = stats.validate_result(doc)
    assert len(problems) == 5, problems


def test_table_shows_each_system_and_the_ratio_column():
    doc = _doc()
    text = stats.table({n: d["figures"] for n, d in doc["systems"].items()}, doc["comparisons"])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["figure", "corosync-udpu", "cmanlk-udpu"]
    row = next(line for line in lines if line.startswith("throughput.1sender.64.msgs_per_s"))
    assert "10.0k" in row and "5000" in row and "0.50x MISS" in row and ">= 1x" in row
    assert not any(line.startswith("join.median_s") for line in lines)  # no system has it


def test_min_ratio_takes_each_figure_from_the_fastest_client():
    coro = {"throughput.1sender.64.msgs_per_s": 10000.0, "throughput.1sender.1024.msgs_per_s": 8000.0,
            "latency.p50_us": 500.0}  # fmt: skip
    py = {"throughput.1sender.64.msgs_per_s": 5000.0, "throughput.1sender.1024.msgs_per_s": 8000.0,
          "latency.p50_us": 1000.0}  # fmt: skip
    c = {"throughput.1sender.64.msgs_per_s": 9000.0, "throughput.1sender.1024.msgs_per_s": 2000.0}
    rows = stats.compare(py, coro, "cmanlk-py", "corosync-c")
    rows += stats.compare(c, coro, "cmanlk-c", "corosync-c")
    r, worst = stats.min_ratio(rows, ["cmanlk-py", "cmanlk-c"], "corosync-c")  # type: ignore[misc]
    assert r == pytest.approx(0.5) and worst == "latency.p50_us (cmanlk-py)"
    r, worst = stats.min_ratio(rows, ["cmanlk-c"], "corosync-c")  # type: ignore[misc]
    assert r == pytest.approx(0.25) and worst == "throughput.1sender.1024.msgs_per_s (cmanlk-c)"
    assert stats.min_ratio(rows, ["other"], "corosync-c") is None


def test_longest_pause_is_the_one_ending_after_the_cable_pull():
    times = [0, 10, 20, 100, 110, 400, 410]  # a 90 ns pause before the mark, 290 after it
    assert stats.longest_pause(times, 105) == (290, 110)
    assert stats.longest_pause(times, 50) == (290, 110)
    assert stats.longest_pause(times, 500) is None
    assert stats.longest_pause_before(times, 105) == 80
    assert stats.longest_pause([5], 0) is None
