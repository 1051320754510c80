#!/usr/bin/env bash
# Boots the project's test guest under the real Firecracker through the Swift API client and
# shows its serial console: banner, heartbeats, an echoed line, then a clean Ctrl-Alt-Del stop.
set -euo pipefail
cd "$(dirname "$0")/.."

env_file=$(bash scripts/provision-test-assets.sh | tail -n 1)
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a
swift build --product microvm
exec .build/debug/microvm demo "$@"
