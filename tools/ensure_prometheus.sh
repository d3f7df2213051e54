#!/usr/bin/env sh
# Debian's prometheus + promtool for the observability and alert-rule tests (no-op when present).
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
  || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; } \
  || echo "warning: could not install Debian's prometheus; its tests will skip (or fail under ERL_REQUIRE_ALL=1)" >&2
exit 0
