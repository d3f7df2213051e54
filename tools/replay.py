"""Replay the journal: one intent's lifecycle, or a summary of all of them.

    python -m tools.replay intent <signal_id | correlation_id | client_order_id> [--json]
    python -m tools.replay summary [--since-hours H] [--json]

Reads the JetStream journal named by NATS_URL / NATS_STREAM / NATS_SUBJECT_PREFIX.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys

import nats.js.errors
from nats.js import JetStreamContext

from libs.common.bus import connect_nats
from libs.common.config import NatsSettings, load
from libs.common.messages import SignalDecision, decode
from libs.common.replay import (
    IntentTimeline,
    describe,
    find_by_client_order_id,
    order_subjects,
    replay_timelines,
    summarize,
)


async def load_timelines(
    settings: NatsSettings,
    correlation_id: str | None = None,
    since_hours: float | None = None,
    keep_entries: bool = True,
) -> tuple[dict[str, IntentTimeline], list[str]]:
    nc = await connect_nats(settings, "replay", fail_fast=True)
    errors: list[str] = []
    try:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=since_hours) if since_hours else None
        timelines, _ = await replay_timelines(
            nc.jetstream(),
            settings.stream,
            settings.subject_prefix,
            order_subjects(settings.subject_prefix, correlation_id),
            since=since,
            errors=errors,
            keep_entries=keep_entries,
        )
    finally:
        await nc.close()
    return timelines, errors


def timeline_json(t: IntentTimeline) -> dict:
    return {
        "correlation_id": t.correlation_id,
        "state": t.state.value if t.state else None,
        "client_order_ids": sorted(t.client_order_ids),
        "retries": t.retries,
        "restarts": t.restarts,
        "events": [{"seq": e.seq, "subject": e.subject, **e.msg.model_dump(mode="json")} for e in t.entries],
    }


async def cmd_intent(settings: NatsSettings, key: str, as_json: bool) -> int:
    timelines, errors = await load_timelines(settings, correlation_id=key)
    t = timelines.get(key)
    if t is None:
        # a signal id: entry's decision names its intent (a refused signal has none)
        decision = await signal_decision(settings, key)
        if decision is not None and decision.correlation_id:
            timelines, errors = await load_timelines(settings, correlation_id=decision.correlation_id)
            t = timelines.get(decision.correlation_id)
        elif decision is not None:
            print(f"signal {key} refused by entry: {decision.reason}", file=sys.stderr)
            return 1
    if t is None:
        # not a correlation id: scan for a client order id
        timelines, errors = await load_timelines(settings)
        t = find_by_client_order_id(timelines, key)
    if t is None:
        print(
            f"no intent with signal id, correlation id or client order id {key!r} in the journal",
            file=sys.stderr,
        )
        return 1
    if as_json:
        print(json.dumps(timeline_json(t), indent=2))
    else:
        print("\n".join(timeline_lines(t)))
    for err in errors:
        print(f"warning: undecodable journal entry: {err}", file=sys.stderr)
    return 0


def timeline_lines(t: IntentTimeline) -> list[str]:
    """One intent's lifecycle as readable lines: what it is, then every journal event."""
    i = t.intent
    out = [f"correlation_id {t.correlation_id}  state {t.state.value if t.state else '-'}"]
    if i is not None:
        out.append(
            f"intent {i.intent_id}  {i.bucket.value} {i.side} {i.symbol}  client ids {sorted(t.client_order_ids)}"
        )
    return out + ["  " + describe(e) for e in t.entries]


async def signal_decision(settings: NatsSettings, signal_id: str) -> SignalDecision | None:
    """Entry's decision on this signal (the last one journaled), None when there is none."""
    nc = await connect_nats(settings, "replay", fail_fast=True)
    try:
        return await decision_in(nc.jetstream(), settings, signal_id)
    finally:
        await nc.close()


async def decision_in(js: JetStreamContext, settings: NatsSettings, signal_id: str) -> SignalDecision | None:
    try:
        raw = await js.get_last_msg(settings.stream, f"{settings.subject_prefix}.entry.decision.{signal_id}")
    except nats.js.errors.NotFoundError:
        return None
    stored = int(raw.time.timestamp() * 1000) if raw.time else None
    d = decode(settings.subject_prefix, raw.subject or "", raw.data or b"", stored)
    return d if isinstance(d, SignalDecision) else None


async def cmd_summary(settings: NatsSettings, since_hours: float | None, as_json: bool) -> int:
    timelines, errors = await load_timelines(settings, since_hours=since_hours, keep_entries=False)
    s = summarize(timelines)
    s["undecodable"] = len(errors)
    if as_json:
        print(json.dumps(s, indent=2))
    else:
        print("\n".join(summary_lines(s)))
    return 0


def summary_lines(s: dict) -> list[str]:
    """The summary as text: the counts, then one line per intent."""
    out = [f"{k:>24}: {v}" for k, v in s.items() if k != "intent_list"]
    out.append("intents:")
    for r in s["intent_list"]:
        what = (
            f"{r['bucket']:<5} {r['side']:<4} {r['symbol']:<16}"
            if r["bucket"]
            else f"{'cancel':<5} {'':<4} {'':<16}"
        )
        out.append(
            f"  {r['correlation_id']}  {what} {r['state'] or 'NO_TRANSITIONS':<14} {' '.join(r['client_order_ids'])}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.replay", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("intent", help="lifecycle of one intent")
    pi.add_argument("key", help="signal id, correlation id or client order id")
    pi.add_argument("--json", action="store_true")
    ps = sub.add_parser("summary", help="summary of all intents")
    ps.add_argument("--since-hours", type=float)
    ps.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    settings = load(NatsSettings)
    try:
        if a.cmd == "intent":
            return asyncio.run(cmd_intent(settings, a.key, a.json))
        return asyncio.run(cmd_summary(settings, a.since_hours, a.json))
    except Exception as e:
        print(
            f"replay failed against {settings.url} stream {settings.stream}: {type(e).__name__}: {e}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
