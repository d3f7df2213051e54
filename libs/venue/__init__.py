"""Everything we know about talking to a venue, in one package; services deal in our types only.

One venue, Binance USD-M, through ccxt's ``binanceusdm``:

- ``client``: the ccxt client factory (request limits, the pause hold, the linear error table for any host)
- ``requests``: request building (client-id params, a create's raw params as ccxt's ``create_order``
  would send them)
- ``order_states``: the one map from a venue order status to our ``OrderState`` (REST and stream)
- ``parsing``: ccxt answers -> ``VenueOrder`` / ``VenuePosition``
- ``raw_orders``: a create's raw answer -> ``VenueOrder``, equal to ``parsing``'s reading of ccxt's parse
- ``error_policy``: a venue failure -> what the caller may do about it; ``VenueError``
- ``limits``: used weight, order counts, bans and Retry-After pauses (pure)
- ``binance_usdm``: the venue's operations; its edge catches ``ccxt.BaseError`` and raises
  ``VenueError`` with the policy's decision, anything else (a bug of ours) propagates unclassified

A second venue would be a sibling of ``binance_usdm`` (and of ``client`` / ``error_policy`` where its
wire differs) answering in the same types.
"""
