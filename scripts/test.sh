#!/usr/bin/env bash
# Runs the whole test suite: unit, spec conformance and end-to-end tests against the real
# Firecracker and jailer. Provisions the test assets first (cached; offline after the first run).
# End-to-end tests need root and /dev/kvm; with CI set, a missing prerequisite fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

# The network tests build namespaces, veths, TAPs and nft tables (inside namespaces they make):
# they need nftables and iproute2, which a fresh Debian machine may lack; iptables brings
# iptables-legacy, with which the preflight test sets a legacy FORWARD policy DROP (in a
# namespace of its own) as Docker or ufw on iptables-legacy would.
if ! command -v nft >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1 || ! command -v iptables-legacy >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing nftables, iproute2 and iptables (Debian packages)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends nftables iproute2 iptables >/dev/null
    fi
fi

bash scripts/provision-test-assets.sh >/dev/null
swift build --build-tests
# Serially: end-to-end tests measure timing (pause, heartbeats) on a 2-core machine.
swift test --skip-build --no-parallel "$@"
