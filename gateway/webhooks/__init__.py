"""The engine of the ``webhooks`` plugin: its settings, Stripe's signature scheme and event
parsing, and the stores that keep events and deliveries durable (SQLite, and Redis for
several instances sharing one queue)."""
