#!/usr/bin/env bash
# Install the gateway and run it with config.example.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh speed
: "${STRIPE_SECRET_KEY:=sk_test_demo_not_a_real_key}"
export STRIPE_SECRET_KEY
exec .venv/bin/stripe-gateway serve --config config.example.toml "$@"
