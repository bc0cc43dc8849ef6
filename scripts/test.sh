#!/usr/bin/env bash
# Install what the tests need (venv, dev extras, Debian's redis-server) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
# the console's browser test drives Debian's chromium through Debian's chromedriver
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# promtool (in Debian's prometheus package; not its recommended node exporter) checks and
# unit-tests deploy/prometheus/alerts.yml
if ! command -v promtool >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# pytest exits 5 when it collected no tests: that is a failure here too.
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
