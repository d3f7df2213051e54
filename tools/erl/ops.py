"""`erl status`, `erl orders`, `erl halt`, `erl resume`: the services' REST answers, on one screen."""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tools.erl import fmt
from tools.erl.args import UsageError
from tools.erl.endpoints import Endpoints, HttpError, Unreachable, admin_token, http

OK, UNREACHABLE, USAGE = 0, 1, 2


def _get(url: str) -> dict | str:
    try:
        return http("GET", url)
    except (Unreachable, HttpError) as e:
        return str(e)


def refresh(ep: Endpoints) -> None:
    """One reconcile tick now: positions and orders as the venue has them, not as of the last tick
    (up to RECONCILE_STREAM_UP_INTERVAL_SEC old while the venue stream is up)."""
    try:
        http("POST", f"{ep.services['reconciler']}/reconcile", timeout=10.0)
    except (Unreachable, HttpError):
        pass  # the status screen says the reconciler is down


def gather(ep: Endpoints) -> tuple[dict | str, dict[str, dict | str], dict | str]:
    """Every service's /status, risk's /guard and the reconciler's view, asked at once."""
    refresh(ep)
    urls = {name: f"{base}/status" for name, base in ep.services.items()}
    if ep.simulated:
        urls["simulator"] = f"{ep.venue_url}/status"
    with ThreadPoolExecutor(len(urls) + 1) as pool:
        guard_f = pool.submit(_get, f"{ep.services['risk']}/guard")
        futures = {name: pool.submit(_get, url) for name, url in urls.items()}
        services = {name: f.result() for name, f in futures.items()}
        guard = guard_f.result()
    return guard, services, services.get("reconciler", "not asked")


def cmd_status(a: argparse.Namespace, ep: Endpoints) -> int:
    guard, services, recon = gather(ep)
    lines = fmt.status_screen(
        guard if isinstance(guard, dict) else None,
        services,
        recon if isinstance(recon, dict) else None,
    )
    print("\n".join(lines))
    down = [n for n, s in services.items() if isinstance(s, str)]
    if down:
        print(f"unreachable: {', '.join(down)}")
        return UNREACHABLE
    return OK


def cmd_orders(a: argparse.Namespace, ep: Endpoints) -> int:
    refresh(ep)
    st = http("GET", f"{ep.services['reconciler']}/status")
    orders = [o for o in st.get("open_orders") or [] if a.symbol is None or o["symbol"] == a.symbol]
    print("\n".join(fmt.orders_table(orders)))
    return OK


def cmd_halt(a: argparse.Namespace, ep: Endpoints) -> int:
    return _command(ep, "halt", a.reason)


def cmd_resume(a: argparse.Namespace, ep: Endpoints) -> int:
    return _command(ep, "resume", a.reason)


def _command(ep: Endpoints, action: str, reason: str) -> int:
    token = admin_token()
    if token is None:
        raise UsageError(
            "no admin token: set RISK_ADMIN_TOKEN, or run from the directory of `make run` (.run/admin-token; ERL_RUN_DIR elsewhere)"
        )
    url = f"{ep.services['risk']}/{action}"
    try:
        knobs: Any = http("POST", url, {"reason": reason}, token=token, timeout=10.0)
    except HttpError as e:
        if e.status == 422:
            raise UsageError(f"risk refused the reason: {e.body}") from None
        if e.status == 401:
            print(f"{action} refused: bad admin token ({url})")
            return UNREACHABLE
        raise
    entries = "entries allowed" if knobs.get("allow_entries") else "ENTRIES BLOCKED"
    print(
        f"{action:<9} done: guard {knobs.get('mode')}  {entries}"
        + (f"  ({knobs['reason']})" if knobs.get("reason") else "")
    )
    return OK
