"""The built-in Stripe sandbox: an in-memory Stripe stand-in for the demo, the tests and the
benchmarks (see docs/sandbox.md). It imports nothing from the gateway."""
