#!/usr/bin/env bash
# Install the gateway and run its demo: the gateway in front of the built-in Stripe sandbox.
# The "demo" extra brings the stripe SDK, which the Python snippet the demo prints uses (with
# this venv's python); curl, for the curl lines it prints, is installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh demo
if ! command -v curl >/dev/null; then
  if [ "$(id -u)" = 0 ]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo); else
    sudo=(false); fi
  "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq curl >/dev/null || echo "curl is not installed: the curl lines need it" >&2
fi
exec .venv/bin/stripe-gateway demo "$@"
