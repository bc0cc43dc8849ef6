#!/usr/bin/env bash
# Install the gateway and run its demo: the gateway in front of the built-in Stripe sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh speed
exec .venv/bin/stripe-gateway demo "$@"
