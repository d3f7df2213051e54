"""``erl``: one command for every operator act (signal, close, status, orders, halt, resume, replay,
tail, soak). It talks to the stack with the services' own settings (NATS_*, *_HTTP_PORT,
EXCHANGE_API_URL), checks its arguments before it touches anything, and fails fast and non-zero when
the bus or a service cannot be reached.

Exit codes: 0 done; 1 the bus, a service or the venue unreachable (or nothing found); 2 bad arguments;
3 refused (by entry, the router or the venue); 4 no answer within --wait.
"""
