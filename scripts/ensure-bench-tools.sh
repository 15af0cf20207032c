#!/usr/bin/env bash
# The ingest benchmark drives the server with wrk (Debian package), a load generator
# fast enough not to be the bottleneck on a 2-core machine.
set -eu
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq wrk >/dev/null
  fi
fi
