"""The Grafana dashboards, defined once here and rendered to deploy/grafana/dashboards/*.json.

    python -m tools.dashboards --write

Queries use Grafana's ``$__rate_interval`` and ``$__range``; the observability
test substitutes concrete windows and requires every query to return data
from a live stack scraped by a real Prometheus.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    panels: list[Panel] = field(default_factory=list)


def q(expr: str, legend: str = "") -> tuple[str, str]:
    return expr, legend


def p99(metric: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.99, sum by ({group}) (rate({metric}_bucket[$__rate_interval])))"


DASHBOARDS = [
    Dashboard(
        "erl-order-flow",
        "erl / Order flow",
        [
            Panel(
                "Signals by decision",
                (q("sum by (decision) (rate(erl_signals_total[$__rate_interval]))", "{{decision}}"),),
                "ops",
            ),
            Panel(
                "Entry refusals by reason",
                (q("sum by (reason) (rate(erl_entry_blocks_total[$__rate_interval]))", "{{reason}}"),),
                "ops",
            ),
            Panel(
                "Intents received",
                (
                    q(
                        "sum by (service, kind, bucket) (rate(erl_intents_total[$__rate_interval]))",
                        "{{service}} {{kind}} {{bucket}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Orders by outcome",
                (
                    q(
                        "sum by (bucket, outcome) (rate(erl_orders_total[$__rate_interval]))",
                        "{{bucket}} {{outcome}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Order transitions",
                (
                    q(
                        "sum by (to_state) (rate(erl_order_transitions_total[$__rate_interval]))",
                        "{{to_state}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Intent -> settled latency",
                (
                    q(p99("erl_intent_to_settled_seconds"), "p99"),
                    q(
                        "histogram_quantile(0.5, sum by (le) (rate(erl_intent_to_settled_seconds_bucket[$__rate_interval])))",
                        "p50",
                    ),
                ),
                "s",
            ),
            Panel(
                "Venue create latency p99",
                (q(p99("erl_order_submit_latency_seconds", "outcome"), "{{outcome}}"),),
                "s",
            ),
            Panel("Orders with unknown outcome", (q("max(erl_orders_unknown)", "unknown"),), "short", "stat"),
            Panel(
                "Leverage caps applied",
                (q("sum(increase(erl_leverage_capped_total[$__range]))", "capped"),),
                "short",
                "stat",
            ),
            Panel("Journal backlog", (q("max by (service) (erl_journal_backlog)", "{{service}}"),)),
        ],
    ),
    Dashboard(
        "erl-retries-errors",
        "erl / Retries and errors",
        [
            Panel(
                "Retries by error class",
                (
                    q(
                        "sum by (error_class) (rate(erl_order_retries_total[$__rate_interval]))",
                        "{{error_class}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Retries by operation and reason",
                (
                    q(
                        "sum by (operation, reason) (rate(erl_order_retries_total[$__rate_interval]))",
                        "{{operation}} {{reason}}",
                    ),
                ),
                "ops",
            ),
            Panel("Retry backoff p99", (q(p99("erl_order_retry_delay_seconds"), "p99"),), "s"),
            Panel(
                "Cancels by outcome",
                (q("sum by (outcome) (increase(erl_cancels_total[$__range]))", "{{outcome}}"),),
            ),
            Panel(
                "Cancel/replace give-ups",
                (q("sum by (state) (increase(erl_cancel_replace_giveups_total[$__range]))", "{{state}}"),),
            ),
            Panel(
                "Policy blocks",
                (
                    q(
                        "sum by (service, reason) (increase(erl_policy_blocks_total[$__range]))",
                        "{{service}} {{reason}}",
                    ),
                ),
            ),
            Panel(
                "Dead letters",
                (
                    q(
                        "sum by (service, reason) (increase(erl_dead_letters_total[$__range]))",
                        "{{service}} {{reason}}",
                    ),
                ),
            ),
            Panel(
                "Journal publish failures",
                (q("sum by (service) (increase(erl_publish_failures_total[$__range]))", "{{service}}"),),
            ),
        ],
    ),
    Dashboard(
        "erl-reconcile-protection",
        "erl / Reconcile and protection",
        [
            Panel("Mismatch streak", (q("max(erl_reconcile_mismatch_streak)", "streak"),), "short", "stat"),
            Panel(
                "Mismatches by kind",
                (q("sum by (kind) (increase(erl_reconcile_mismatches_total[$__range]))", "{{kind}}"),),
            ),
            Panel(
                "Repairs by action",
                (q("sum by (action) (increase(erl_reconcile_repairs_total[$__range]))", "{{action}}"),),
            ),
            Panel(
                "Repairs held back (cooldown / anti-churn)",
                (q("sum(increase(erl_reconcile_repair_skipped_total[$__range]))", "skipped"),),
            ),
            Panel(
                "Protection gaps",
                (
                    q("max(erl_protection_gaps_open)", "open"),
                    q("max(erl_protection_gaps_breached)", "over TTL"),
                ),
            ),
            Panel("Oldest protection gap", (q("max(erl_protection_gap_oldest_seconds)", "age"),), "s"),
            Panel("Unprotected time p99 (closed gaps)", (q(p99("erl_unprotected_seconds"), "p99"),), "s"),
            Panel("Orphan orders", (q("max(erl_orphan_orders)", "orphans"),), "short", "stat"),
            Panel("Reconcile tick p99", (q(p99("erl_reconcile_tick_seconds"), "p99"),), "s"),
            Panel(
                "Venue read failures",
                (q("sum(increase(erl_reconcile_read_failures_total[$__range]))", "failures"),),
            ),
        ],
    ),
    Dashboard(
        "erl-risk-posture",
        "erl / Risk posture",
        [
            Panel("Entries allowed", (q("max(erl_guard_allow_entries)", "allowed"),), "short", "stat"),
            Panel("Guard mode", (q("max by (mode) (erl_guard_mode)", "{{mode}}"),)),
            Panel(
                "Kill switch",
                (q("max(erl_kill_switch_tripped)", "tripped"), q("max(erl_manual_halt)", "manual halt")),
            ),
            Panel(
                "Kill-switch trips by trigger",
                (q("sum by (reason) (increase(erl_kill_switch_trips_total[$__range]))", "{{reason}}"),),
            ),
            Panel("Belief debt", (q("max(erl_belief_debt)", "debt"),)),
            Panel(
                "Entry shedding (router load)",
                (
                    q("max(erl_risk_router_load_level)", "level: 0 ok 1 unknown 2 throttle 3 block"),
                    q("max(erl_risk_router_load_mode)", "mode: 0 normal .. 3 halted"),
                ),
            ),
            Panel("Router entry lag", (q("max(erl_router_entry_lag_seconds)", "lag"),), "s"),
            Panel("Waiting for the router", (q("max(erl_router_backlog)", "messages"),)),
            Panel(
                "Guard knobs",
                (
                    q("max(erl_guard_max_leverage)", "max leverage"),
                    q("max(erl_guard_min_entry_conf)", "min confidence"),
                ),
            ),
            Panel("Max notional per entry", (q("max(erl_guard_max_notional_usdt)", "USDT"),), "currencyUSD"),
            Panel("NATS connection", (q("min by (service) (erl_nats_connected)", "{{service}}"),)),
            Panel("Services up", (q('up{job=~"router|reconciler|risk|entry|venue_stream"}', "{{job}}"),)),
            Panel(
                "REST latency p99",
                (q(p99("erl_http_request_duration_seconds", "service"), "{{service}}"),),
                "s",
            ),
        ],
    ),
    Dashboard(
        "erl-venue-stream",
        "erl / Venue stream",
        [
            Panel("Stream connected", (q("max(erl_venue_stream_up)", "up"),), "short", "stat"),
            Panel(
                "Reconciler trusts the stream",
                (q("max(erl_reconcile_stream_trusted)", "trusted"),),
                "short",
                "stat",
            ),
            Panel(
                "Sessions ended by reason",
                (
                    q(
                        "sum by (reason) (increase(erl_venue_stream_session_ends_total[$__range]))",
                        "{{reason}}",
                    ),
                ),
            ),
            Panel(
                "Pushed updates by outcome",
                (
                    q(
                        "sum by (outcome) (rate(erl_venue_stream_events_total[$__rate_interval]))",
                        "{{outcome}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Router use of venue facts",
                (q("sum by (outcome) (increase(erl_router_venue_facts_total[$__range]))", "{{outcome}}"),),
            ),
            Panel(
                "Orders the stream never pushed",
                (q("sum(increase(erl_reconcile_stream_unconfirmed_total[$__range]))", "unconfirmed"),),
            ),
            Panel(
                "Reconcile interval (slower while the stream is trusted)",
                (q("max(erl_reconcile_interval_seconds)", "interval"),),
                "s",
            ),
        ],
    ),
]


def render(d: Dashboard) -> dict:
    panels = []
    for i, p in enumerate(d.panels):
        panels.append(
            {
                "id": i + 1,
                "type": p.kind,
                "title": p.title,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {},
                "targets": [
                    {"refId": chr(ord("A") + j), "datasource": DATASOURCE, "expr": e, "legendFormat": legend}
                    for j, (e, legend) in enumerate(p.exprs)
                ],
            }
        )
    return {
        "uid": d.uid,
        "title": d.title,
        "tags": ["erl"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels,
    }


def rendered() -> dict[Path, str]:
    return {OUT / f"{d.uid}.json": json.dumps(render(d), indent=2) + "\n" for d in DASHBOARDS}


def all_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel, expr) for every query of every panel."""
    return [(d.title, p.title, e) for d in DASHBOARDS for p in d.panels for e, _ in p.exprs]


if __name__ == "__main__":
    if "--write" in sys.argv:
        OUT.mkdir(parents=True, exist_ok=True)
        for path, text in rendered().items():
            path.write_text(text)
    else:
        for d, p, e in all_queries():
            print(f"{d} | {p} | {e}")
