"""The markdown report of a bench/run.py run (also saved as bench/out/last.md)."""

from typing import Any

from harness import STALL_MS, Run, cells, table
from plans import STATEMENT_RUNS
from scenarios import SCENARIOS


def ok(passed: bool) -> str:
    return "ok" if passed else "MISS"


def busiest(*runs: Run | None) -> str:
    return f"{max(r.others for r in runs if r):.2f}"


def report(res: dict[str, Any]) -> str:
    out = [f"Machine: {res['machine']}", "", f"Setup: {res['setup']}", ""]
    big, small = res["messages"]
    if main := res.get("main"):
        rows = []
        for name, runs in main.items():
            (label, target), o, c = SCENARIOS[name], runs["app"], runs.get("ceiling")
            ratio = f"{o.rps / c.rps:.0%}" if c else "—"
            goal = f"≥ {target:.0%} {ok(o.rps / c.rps >= target)}" if target and c else "—"
            if target and target > 1:  # in req/s
                goal = f"≥ {target:.0f}/s {ok(o.rps >= target)}"
            fields = ("rps", "p50", "p99", "errors", "peak_mib")
            rows.append([label, *cells(o, *fields), *cells(c, *fields), ratio, goal, busiest(o, c)])
        head = "scenario | ours req/s | p50 ms | p99 ms | errors | peak MiB | ceiling req/s"
        head += " | p50 ms | p99 ms | errors | peak MiB | ours ÷ ceiling | target | others"
        note = (
            "p50/p99: medians over the runs; errors: all runs added up (socket errors, "
            "timeouts, HTTP status >= 400); peak MiB: the server's highest RSS; others: "
            "cores used during the runs by processes that are not the bench's (a shared "
            "machine: anything above ~0.1 skews the numbers)."
        )
        out += table("", head, rows, note, "")
    if c256 := res.get("c256"):
        rows = []
        for name, runs in c256.items():
            o, c = runs["app"], runs.get("ceiling")
            c32 = res.get("main", {}).get(name, {}).get("app")
            kept = f"{o.rps / c32.rps:.0%}" if c32 else "—"
            ours = [*cells(o, "rps"), kept, *cells(o, "p50", "p99", "max", "errors", "peak_mib")]
            passed = ok(o.errors == 0 and o.max < STALL_MS)
            ceiling = cells(c, "rps", "p99", "max", "errors")
            rows.append([SCENARIOS[name][0], *ours, passed, *ceiling, busiest(o, c)])
        title = (
            "256 connections (target, ours: no errors and no stall = no request over "
            f"{STALL_MS // 1000} s); vs c=32: req/s kept from the main table; the ceiling's "
            "numbers are for comparison:"
        )
        head = "scenario | req/s | vs c=32 | p50 ms | p99 ms | max ms | errors | peak MiB |"
        out += table(title, f"{head} | ceiling req/s | p99 ms | max ms | errors | others", rows)
    if scale := res.get("scale"):
        rows = []
        for page, by_db in scale.items():
            b, s = by_db["main"], by_db["small"]
            slower, p50 = s.rps / b.rps, b.p50 / s.p50
            ratios = [f"{slower:.2f}x", f"{p50:.2f}x", ok(slower <= 1.25 and p50 <= 1.25)]
            rows.append(
                [page, *cells(b, "rps", "p50"), *cells(s, "rps", "p50"), *ratios, busiest(b, s)]
            )
        title = f"Pages at {big:,} vs {small:,} messages (ours; target: within 1.25x):"
        head = f"page | req/s @{big:,} | p50 ms | req/s @{small:,} | p50 ms | slowdown (req/s)"
        out += table(title, f"{head} | slowdown (p50) | | others", rows)
    if stats := res.get("statements"):
        rows = [
            [name, f"{s['user']} ({s['threads']})", str(s["rows"]), f"{s['p50']:.2f}",
             f"{s['p99']:.2f}"]
            for name, s in stats.items()
        ]  # fmt: skip
        title = (
            f"The app's statement for a scenario's first request, {STATEMENT_RUNS} times in a "
            f"row on one connection ({big:,} messages, after the runs above):"
        )
        out += table(title, "scenario | user (threads) | rows | p50 ms | p99 ms", rows)
        for name, s in stats.items():
            out += [f"EXPLAIN (ANALYZE, BUFFERS), {name} at {big:,} messages:", ""]
            out += ["```", s["plan"], "```", ""]
    if login := res.get("login"):
        i, b, t = login["idle"], login["busy"], login["logins"]
        rows = [
            ["idle", *cells(i, "rps", "p50", "p99"), "—", busiest(i)],
            ["with 8 logins", *cells(b, "rps", "p50", "p99"), *cells(t, "rps"), busiest(b)],
        ]
        title = "users/me while 8 connections hammer POST /api/auth/token (target: p99 < 2x idle):"
        ratio = f"p99 ratio: {b.p99 / i.p99:.2f}x — {ok(b.p99 / i.p99 < 2)}"
        out += table(
            title, "| users/me req/s | p50 ms | p99 ms | logins/s | others", rows, ratio, ""
        )
    if marks := res.get("memory"):
        m0, m1 = marks
        growth = m1["rss"] / m0["rss"]
        out += ["Server memory, a fresh app process serving users/me (target: within 10%):", ""]
        out += [
            f"- after {m['requests']:,} requests: RSS {m['rss']:.1f} MiB (peak {m['peak']:.1f} "
            f"MiB; {m['minutes']:.1f} min, {m['rps']:.0f} req/s, {m['errors']} errors)"
            for m in marks
        ]
        out += [f"- growth: {100 * (growth - 1):+.1f}% — {ok(growth <= 1.10)}", ""]
    return "\n".join(out)
