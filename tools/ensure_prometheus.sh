#!/usr/bin/env sh
# Debian's prometheus + promtool and prometheus-alertmanager for the observability, alert-rule and
# alert-delivery tests (no-op when present).
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
  && command -v prometheus-alertmanager >/dev/null 2>&1 && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
PKGS="prometheus prometheus-alertmanager"
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $PKGS >/dev/null 2>&1 \
  || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q --no-install-recommends $PKGS >/dev/null 2>&1; } \
  || echo "warning: could not install Debian's $PKGS; their tests will skip (or fail under ERL_REQUIRE_ALL=1)" >&2
exit 0
