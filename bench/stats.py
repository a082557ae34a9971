"""Pure parts of the benchmark: statistics, figure names, targets, comparisons, the result file.

Nothing here touches processes or the network, so tests/unit/test_bench_stats.py checks it fast.
The result file layout is documented in docs/bench.md; `validate_result` is its executable form.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA = "cmanlk-bench/1"
SIZES = (64, 1024, 16384, 65536)
MODES = ("1sender", "allsenders")
MIB = 1024 * 1024


def percentile(values: Iterable[float], q: float) -> float | None:
    """Return the q-quantile (0 ≤ q ≤ 1) by the nearest-rank method; None for no values.

    Raises ValueError when q is outside [0, 1].
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    data = sorted(values)
    if not data:
        return None
    rank = max(1, math.ceil(q * len(data)))
    return data[rank - 1]


def median(values: Iterable[float]) -> float | None:
    """Return the median (mean of the two middle values for an even count); None for no values."""
    data = sorted(values)
    if not data:
        return None
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2


def rate_per_s(count: int, first_ns: int, last_ns: int) -> float | None:
    """Messages per second between the first and the last delivery; None when undefined."""
    if count < 2 or last_ns <= first_ns:
        return None
    return (count - 1) / ((last_ns - first_ns) / 1e9)


def longest_pause(times_ns: Iterable[int], after_ns: int) -> tuple[int, int] | None:
    """The longest interval between two consecutive deliveries that ends after `after_ns`.

    Returns (length ns, start ns), or None with fewer than two deliveries. A pause that began
    before `after_ns` counts (the stream may have been waiting for the token when the cable went).
    """
    data = sorted(times_ns)
    best: tuple[int, int] | None = None
    for a, b in itertools.pairwise(data):
        if b > after_ns and (best is None or b - a > best[0]):
            best = (b - a, a)
    return best


def longest_pause_before(times_ns: Iterable[int], before_ns: int) -> int:
    """The longest interval between consecutive deliveries that ended by `before_ns` (0 if none)."""
    data = sorted(t for t in times_ns if t <= before_ns)
    return max((b - a for a, b in itertools.pairwise(data)), default=0)


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, or None when either is missing or the baseline is 0."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def throughput_key(mode: str, size: int, unit: str) -> str:
    """Figure name of a throughput figure; unit is "msgs_per_s" or "mb_per_s"."""
    return f"throughput.{mode}.{size}.{unit}"


@dataclass(frozen=True)
class Target:
    """A goal from the issue: `kind` "ratio_min"/"ratio_max" (cmanlk/corosync) or "abs_max" (value)."""

    figure: str
    kind: str
    bound: float

    def text(self) -> str:
        if self.kind == "ratio_min":
            return f">= {self.bound:g}x"
        if self.kind == "ratio_max":
            return f"<= {self.bound:g}x"
        return f"<= {self.bound:g}"

    def met(self, value: float | None, rat: float | None) -> bool | None:
        """True/False when it can be judged, None when a figure is missing."""
        if self.kind == "abs_max":
            return None if value is None else value <= self.bound
        if rat is None:
            return None
        return rat >= self.bound if self.kind == "ratio_min" else rat <= self.bound


def daemon_cpu_key(mode: str, size: int) -> str:
    """Daemon CPU µs per delivered message per node (mean over nodes) in that throughput round."""
    return f"cpu.daemon_us_per_msg.{mode}.{size}"


def client_cpu_key(mode: str, size: int) -> str:
    """The busiest node's bench client CPU in % of one core during that throughput round."""
    return f"client.cpu_pct.{mode}.{size}"


def _targets() -> dict[str, Target]:
    # Issue 11: at least corosync-with-C-client's throughput at every size and sender count, and
    # no more than its p50 latency.
    out: dict[str, Target] = {}
    for mode in MODES:
        for size in SIZES:
            key = throughput_key(mode, size, "msgs_per_s")
            out[key] = Target(key, "ratio_min", 1.0)
    out["latency.p50_us"] = Target("latency.p50_us", "ratio_max", 1.0)
    out["reform.median_s"] = Target("reform.median_s", "ratio_max", 1.0)
    out["failover.gap_ms"] = Target("failover.gap_ms", "abs_max", 100.0)
    out["rss.max_mib"] = Target("rss.max_mib", "abs_max", 60.0)
    return out


TARGETS = _targets()


def figure_names() -> list[str]:
    """Every figure a system can report, in table order."""
    names = []
    for m in MODES:
        for s in SIZES:
            names += [throughput_key(m, s, u) for u in ("msgs_per_s", "mb_per_s")]
            names += [daemon_cpu_key(m, s), client_cpu_key(m, s)]
    names += [
        "latency.p50_us",
        "latency.p99_us",
        "latency.send_call_p50_us",
        "client.latency_cpu_pct",
        "reform.median_s",
        "reform.max_s",
        "join.median_s",
        "failover.gap_ms",
        "cpu.load_pct",
        "cpu.idle_pct",
        "rss.max_mib",
        "rss.peak_mib",
    ]
    return names


def compare(
    figures: Mapping[str, float | None], baseline: Mapping[str, float | None], system: str, baseline_name: str
) -> list[dict[str, Any]]:
    """One comparison row per figure: values, ratio system/baseline, target text and whether met."""
    rows = []
    for name in figure_names():
        value = figures.get(name)
        base = baseline.get(name)
        rat = ratio(value, base)
        target = TARGETS.get(name)
        rows.append(
            {
                "figure": name,
                "system": system,
                "baseline": baseline_name,
                "value": value,
                "baseline_value": base,
                "ratio": rat,
                "target": target.text() if target else None,
                "met": target.met(value, rat) if target else None,
            }
        )
    return rows


def min_ratio(
    comparisons: list[dict[str, Any]], systems: Iterable[str], baseline: str
) -> tuple[float, str] | None:
    """The smallest ratio against `baseline` over every throughput figure (msgs/s) and the inverse
    of the p50 latency ratio, each figure taken from the best of `systems` (a system is driven by
    its fastest client). Returns (ratio, "figure (system)"), or None when nothing compares."""
    chosen = set(systems)
    best: dict[str, tuple[float, str]] = {}
    for r in comparisons:
        if r["baseline"] != baseline or r["system"] not in chosen or r["ratio"] is None:
            continue
        fig = r["figure"]
        if fig.startswith("throughput.") and fig.endswith(".msgs_per_s"):
            value = float(r["ratio"])
        elif fig == "latency.p50_us" and r["ratio"] > 0:
            value = 1.0 / float(r["ratio"])
        else:
            continue
        if fig not in best or value > best[fig][0]:
            best[fig] = (value, r["system"])
    if not best:
        return None
    fig, (value, system) = min(best.items(), key=lambda kv: kv[1][0])
    return value, f"{fig} ({system})"


def validate_result(doc: Mapping[str, Any]) -> list[str]:
    """Return every way `doc` departs from the documented result layout (empty: valid)."""
    problems = []
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema is {doc.get('schema')!r}, want {SCHEMA!r}")
    for key, kind in (
        ("started_at", str),
        ("host", dict),
        ("settings", dict),
        ("systems", dict),
        ("comparisons", list),
    ):
        if not isinstance(doc.get(key), kind):
            problems.append(f"{key}: missing or not a {kind.__name__}")
    known = set(figure_names())
    for name, sysdoc in (doc.get("systems") or {}).items():
        if not isinstance(sysdoc, dict):
            problems.append(f"systems.{name}: not an object")
            continue
        if sysdoc.get("status") not in ("ok", "partial", "error", "skipped"):
            problems.append(f"systems.{name}.status: {sysdoc.get('status')!r}")
        for fig, value in (sysdoc.get("figures") or {}).items():
            if fig not in known:
                problems.append(f"systems.{name}.figures: unknown figure {fig}")
            elif value is not None and not isinstance(value, int | float):
                problems.append(f"systems.{name}.figures.{fig}: not a number")
    for i, row in enumerate(doc.get("comparisons") or []):
        for key in ("figure", "system", "baseline", "value", "baseline_value", "ratio", "target", "met"):
            if not isinstance(row, dict) or key not in row:
                problems.append(f"comparisons[{i}]: missing {key}")
                break
    return problems


def fmt(value: float | None) -> str:
    """Short human form of a figure (3 significant digits, k for thousands)."""
    if value is None:
        return "-"
    if abs(value) >= 10_000:
        return f"{value / 1000:.1f}k"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _in_table(fig: str) -> bool:
    """msgs/s for the small sizes, MB/s for the large ones (the JSON keeps both)."""
    if not fig.startswith("throughput."):
        return True
    size = int(fig.split(".")[2])
    return fig.endswith(".msgs_per_s") == (size <= 1024)


def table(systems: Mapping[str, Mapping[str, float | None]], comparisons: list[dict[str, Any]]) -> str:
    """The printed table: one row per figure, one column per system, then each ratio and its target."""
    names = list(systems)
    pairs = list(dict.fromkeys((r["system"], r["baseline"]) for r in comparisons))
    head = ["figure", *names] + [f"{s}/{b}" for s, b in pairs] + ["target"]
    rows = [head]
    by_key = {(r["figure"], r["system"], r["baseline"]): r for r in comparisons}
    for fig in figure_names():
        if all(systems[n].get(fig) is None for n in names) or not _in_table(fig):
            continue
        row = [fig] + [fmt(systems[n].get(fig)) for n in names]
        target = ""
        for s, b in pairs:
            r = by_key.get((fig, s, b))
            if r is None or r["ratio"] is None:
                row.append("-" if r is None or r["met"] is None else ("ok" if r["met"] else "MISS"))
            else:
                mark = "" if r["met"] is None else (" ok" if r["met"] else " MISS")
                row.append(f"{r['ratio']:.2f}x{mark}")
            if r is not None and r["target"]:
                target = r["target"]
        row.append(target or (TARGETS[fig].text() if fig in TARGETS else ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
