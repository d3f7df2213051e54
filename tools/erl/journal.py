"""`erl replay` and `erl tail`: the journal, one intent or live."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time

from libs.common.messages import SignalDecision
from libs.common.replay import (
    IntentTimeline,
    find_by_client_order_id,
    order_subjects,
    replay_timelines,
    summarize,
)
from tools.erl import fmt
from tools.erl.bus import Watch, connected
from tools.erl.endpoints import Endpoints
from tools.replay import decision_in, summary_lines, timeline_json, timeline_lines

OK, NOT_FOUND = 0, 1


async def find(ep: Endpoints, key: str) -> tuple[SignalDecision | None, IntentTimeline | None, list[str]]:
    """``key`` as a correlation id, then a signal id (entry's decision names the intent), then a client
    order id (a scan of the journal)."""
    s = ep.nats
    errors: list[str] = []
    async with connected(s) as nc:
        js = nc.jetstream()

        async def timelines(cid: str | None) -> dict[str, IntentTimeline]:
            found, _ = await replay_timelines(
                js, s.stream, s.subject_prefix, order_subjects(s.subject_prefix, cid), errors=errors
            )
            return found

        found = await timelines(key)
        if key in found:
            return None, found[key], errors
        decision = await decision_in(js, s, key)
        if decision is not None:
            if decision.correlation_id:
                return (
                    decision,
                    (await timelines(decision.correlation_id)).get(decision.correlation_id),
                    errors,
                )
            return decision, None, errors
        return None, find_by_client_order_id(await timelines(None), key), errors


async def cmd_replay(a: argparse.Namespace, ep: Endpoints) -> int:
    if a.summary:
        async with connected(ep.nats) as nc:
            s = ep.nats
            errors: list[str] = []
            tls, _ = await replay_timelines(
                nc.jetstream(),
                s.stream,
                s.subject_prefix,
                order_subjects(s.subject_prefix),
                errors=errors,
                keep_entries=False,
            )
        summary = {**summarize(tls), "undecodable": len(errors)}
        print(json.dumps(summary, indent=2) if a.json else "\n".join(summary_lines(summary)))
        return OK
    decision, timeline, errors = await find(ep, a.key)
    if decision is None and timeline is None:
        print(
            f"nothing in the journal with signal id, correlation id or client order id {a.key!r}",
            file=sys.stderr,
        )
        return NOT_FOUND
    if a.json:
        doc: dict = {"signal_decision": decision.model_dump(mode="json") if decision else None}
        doc["intent"] = timeline_json(timeline) if timeline else None
        print(json.dumps(doc, indent=2))
    else:
        if decision is not None:
            print(
                f"signal {decision.signal_id}  {decision.symbol}  {fmt.decision_line(decision).removeprefix('decision  ')}"
            )
        if timeline is not None:
            print("\n".join(timeline_lines(timeline)))
    for err in errors:
        print(f"warning: undecodable journal entry: {err}", file=sys.stderr)
    return OK


async def cmd_tail(a: argparse.Namespace, ep: Endpoints) -> int:
    colour = sys.stdout.isatty() and not a.no_colour
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=a.since) if a.since else None
    shown = 0
    stop_at = time.monotonic() + a.duration if a.duration else None
    async with connected(ep.nats) as nc:
        w = await Watch(nc, ep.nats, f"{ep.nats.subject_prefix}.>").start(new_only=since is None, since=since)
        try:
            while a.count is None or shown < a.count:
                left = (stop_at - time.monotonic()) if stop_at else 3600.0
                if left <= 0:
                    break
                e = await w.next_entry(min(left, 1.0))
                if e is None:
                    continue
                if not fmt.matches(e, ep.nats.subject_prefix, a.symbol, a.subject, a.all):
                    continue
                print(fmt.paint(fmt.journal_line(e), fmt.severity(e.msg), colour), flush=True)
                shown += 1
        except asyncio.CancelledError:
            pass
        finally:
            await w.stop()
    return OK
