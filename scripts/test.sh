#!/usr/bin/env bash
# Install what the tests need (venv, dev extras, Debian's redis-server) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev

if ! command -v redis-server >/dev/null; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

# pytest exits 5 when it collected no tests: that is a failure here too.
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
