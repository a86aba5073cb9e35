#!/usr/bin/env bash
# System packages the tests drive for real: Debian's chromium (the dashboard page test) and
# prometheus (promtool validates the Prometheus config and unit-tests the alert rules) and
# prometheus-alertmanager (amtool validates the Alertmanager config of the Docker path).
# Called by `make setup`; does nothing when both are already installed.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
    sudo="sudo"
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The package lists of a fresh machine may be stale; refresh them only if the install fails.
if ! $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
