"""The NATS permission model, and the nats-server config rendered from it.

    python -m tools.nats_config                  # print the single-node config
    python -m tools.nats_config --write          # refresh deploy/nats/nats.conf and the cluster configs

One user per service. Publish rights say who may state which facts: only the
router writes order events, only risk writes the guard knobs, strategies may
only publish signals; a halt/resume command (``erl.risk.command.<source>``)
comes only from risk's own REST API (source ``api``) or the reconciler's boot
freeze. Each service may create or update only its own durable consumers;
ops may only read. Every service may read the journal (replay at start-up)
and the knobs. Inboxes are per user (services connect with ``_INBOX.<name>``)
so nobody can read another service's replies. Passwords are environment
references resolved by nats-server at start.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STREAM, PREFIX, BUCKET = "ERL", "erl", "erl_guard"

# Read-only JetStream API: stream and consumer info, batched direct gets of the journal (replay
# creates no consumer), KV gets and ephemeral (nameless) consumers on the knob bucket for KV watches.
# No reader may create a consumer on the journal: the nameless create subject would also update an
# existing durable named in the request body (another service's), and subject permissions cannot
# see the body. No delete, no stream change.
JOURNAL_READ = [
    "$JS.API.INFO",
    f"$JS.API.STREAM.INFO.{STREAM}",
    f"$JS.API.DIRECT.GET.{STREAM}",
    f"$JS.API.STREAM.MSG.GET.{STREAM}",  # the leader's word that a read reached the end (replay.py)
    f"$JS.API.CONSUMER.INFO.{STREAM}.>",
    f"$JS.API.STREAM.INFO.KV_{BUCKET}",
    f"$JS.API.CONSUMER.CREATE.KV_{BUCKET}",
    f"$JS.API.CONSUMER.INFO.KV_{BUCKET}.>",
    f"$JS.FC.KV_{BUCKET}.>",
    f"$JS.API.STREAM.MSG.GET.KV_{BUCKET}",
    f"$JS.API.DIRECT.GET.KV_{BUCKET}.>",
]
# services create the journal and the knob bucket if absent (an existing one is left as it is:
# changing it is STREAM.UPDATE, which nobody has)
BOOTSTRAP = [f"$JS.API.STREAM.CREATE.{STREAM}", f"$JS.API.STREAM.CREATE.KV_{BUCKET}"]


# every durable consumer and the one user that may create, update (and bind) it: the names the services
# give their ConsumerSpecs (services/*/service.py)
DURABLES = {
    "router": "router",  # the router's entry lane
    "router-protect": "router",  # its protect lane: stops, exits, repairs never wait behind entries
    "entry": "entry",
    "entry-fills": "entry",
    "reconciler": "reconciler",
    "risk": "risk",
}

STREAM_STATUS = f"{PREFIX}.venue.stream.>"  # the venue stream's up/down status


def durable(name: str) -> tuple[list[str], list[str]]:
    """(publish, subscribe) a service needs for one of its durable push consumers.

    Create/update on every subject form for this name only, so no service can rewrite another's
    consumer (filter, ack_wait, max_deliver): nats-py 2.16 sends ``CONSUMER.CREATE.<stream>.<name>``
    (``.<filter>`` appended when there is one filter subject); older clients the legacy
    ``CONSUMER.DURABLE.CREATE.<stream>.<name>``.
    """
    create = f"$JS.API.CONSUMER.CREATE.{STREAM}.{name}"
    return (
        [
            create,
            f"{create}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.{name}",
            f"$JS.ACK.{STREAM}.{name}.>",
        ],
        [f"_ERL.deliver.{STREAM}.{name}"],
    )


def service(
    name: str, writes: list[str], *, venue: bool = False, hears: list[str] | None = None
) -> dict[str, list[str]]:
    """``hears``: core-NATS subjects it subscribes to outside its durable consumers."""
    pub, sub = (
        [*JOURNAL_READ, *BOOTSTRAP, *writes, f"{PREFIX}.dlq.{name}"],
        [f"_INBOX.{name}.>", *(hears or [])],
    )
    if venue:  # talks to the venue: states the IP bans it gets, hears everyone's
        pub.append(f"{PREFIX}.venue.ban.{name}")
        sub.append(f"{PREFIX}.venue.ban.>")
    for d in (d for d, owner in DURABLES.items() if owner == name):
        p, s = durable(d)
        pub += p
        sub += s
    return {"publish": pub, "subscribe": sub}


USERS: dict[str, dict[str, list[str]]] = {
    # order events, and its entry load (risk sheds entries on it)
    "router": service("router", [f"{PREFIX}.order.>", f"{PREFIX}.router.load.router"], venue=True),
    "entry": service("entry", [f"{PREFIX}.intent.order.>", f"{PREFIX}.entry.>"], venue=True),
    "reconciler": service(
        "reconciler",
        [
            f"{PREFIX}.intent.order.>",
            f"{PREFIX}.intent.replace.>",
            f"{PREFIX}.intent.cancel.>",  # leftover protection on a flat symbol
            f"{PREFIX}.venue.order.>",  # our orders it saw end without the router (the router settles them)
            f"{PREFIX}.reconcile.>",
            f"{PREFIX}.risk.command.reconciler",
            f"$JS.API.CONSUMER.DELETE.{STREAM}.reconciler",  # it restarts its consumer at boot
        ],
        venue=True,
        hears=[STREAM_STATUS],  # a resumed stream: reconcile at once
    ),
    # the venue's pushed order updates (the router settles them) and the stream's up/down status
    "venue_stream": service(
        "venue_stream",
        [
            f"{PREFIX}.venue.order.>",
            f"{PREFIX}.venue.position.venue_stream",
            f"{PREFIX}.venue.stream.venue_stream",
        ],
        venue=True,
    ),
    # the guard knobs, and its own restart state (kill-switch holds, equity peak, halt) beside them;
    # it journals the halts/resumes its token-checked REST API took (source "api")
    "risk": service(
        "risk",
        [
            f"{PREFIX}.risk.guard.>",
            f"{PREFIX}.risk.kill.>",
            f"{PREFIX}.risk.command.api",
            f"$KV.{BUCKET}.knobs",
            f"$KV.{BUCKET}.risk.state",
        ],
        hears=[f"{PREFIX}.router.load.>"],  # the router's entry load (core NATS: only the latest matters)
    ),
    # strategies: signals in, nothing else
    "strategy": {"publish": [f"{PREFIX}.signal.>"], "subscribe": ["_INBOX.strategy.>"]},
    # operators: signals, `erl close` (a reduce-only EXIT intent: intents from ops pass the router's own
    # entry checks like any other), replay, tail the bus, read the knobs (halts go through risk's REST
    # API); read-only on JetStream: no stream or durable-consumer create, update or delete
    "ops": {
        "publish": [*JOURNAL_READ, f"{PREFIX}.signal.>", f"{PREFIX}.intent.order.>"],
        "subscribe": ["_INBOX.ops.>", f"{PREFIX}.>"],
    },
}


def env_var(user: str) -> str:
    return f"{user.upper()}_NATS_PASSWORD"


def _list(items: list[str], indent: str) -> str:
    return "[\n" + "".join(f'{indent}  "{i}",\n' for i in items) + f"{indent}]"


def render(cluster: str | None = None, store_dir: str = "/data") -> str:
    users = []
    for name, perms in USERS.items():
        users.append(
            "    {\n"
            f"      user: {name}, password: ${env_var(name)}\n"
            "      permissions: {\n"
            f"        publish: {{ allow: {_list(perms['publish'], '        ')} }}\n"
            f"        subscribe: {{ allow: {_list(perms['subscribe'], '        ')} }}\n"
            "      }\n"
            "    }\n"
        )
    cluster_block = ""
    if cluster:
        cluster_block = f"""
cluster {{
  name: erl
  listen: 0.0.0.0:6222
  routes: [{cluster}]
}}
"""
    return f"""# GENERATED by `python -m tools.nats_config --write` from tools/nats_config.py: edit that, not this.
#
# nats-server for the erl stack: the JetStream journal plus one user per service.
# Passwords come from the environment (compose passes them from .env or secrets).

port: 4222
http: 8222
server_name: $NATS_SERVER_NAME

jetstream {{
  store_dir: "{store_dir}"
  # The journal must survive a power cut, not only a crash: fsync every write.
  # (nats-server's default is every 2 minutes; remove this line to trade durability for throughput.)
  sync_interval: always
}}
{cluster_block}
authorization {{
  users: [
{"".join(users)}  ]
}}
"""


CLUSTER_ROUTES = "nats://nats-1:6222, nats://nats-2:6222, nats://nats-3:6222"
TARGETS = {
    ROOT / "deploy/nats/nats.conf": None,
    ROOT / "deploy/nats/nats-cluster.conf": CLUSTER_ROUTES,
}


if __name__ == "__main__":
    if "--write" in sys.argv:
        for path, cluster in TARGETS.items():
            path.write_text(render(cluster))
    else:
        print(render())
