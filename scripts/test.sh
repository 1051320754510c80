#!/usr/bin/env bash
# Runs the whole test suite: unit, spec conformance and end-to-end tests against the real
# Firecracker and jailer. Provisions the test assets first (cached; offline after the first run).
# End-to-end tests need root and /dev/kvm; with CI set, a missing prerequisite fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/provision-test-assets.sh >/dev/null
swift build --build-tests
# Serially: end-to-end tests measure timing (pause, heartbeats) on a 2-core machine.
swift test --skip-build --no-parallel "$@"
