"""The engine of the ``webhooks`` plugin: its settings, Stripe's signature scheme and event
parsing, and the SQLite store that keeps events and deliveries durable."""
