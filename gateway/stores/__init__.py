"""Stores, used by plugins only (the ``cache`` and ``rate_limit`` plugins): a small Redis
(RESP) client (:mod:`~gateway.stores.resp`), the cache's key derivation
(:mod:`~gateway.stores.cachekeys`) and its memory and Redis stores
(:mod:`~gateway.stores.cachestore`), and the rate limiter's GCRA stores
(:mod:`~gateway.stores.ratestore`)."""
