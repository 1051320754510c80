#!/usr/bin/env bash
# The main job: boots the project's test guest with `microvm run`, jailed with the default
# policy, and shows its serial console in the foreground: banner, heartbeats, a line typed into
# the guest and echoed back, then SIGTERM (as Ctrl-C would) stops it cleanly: Ctrl-Alt-Del, the
# guest's goodbye, and every jail, cgroup and record removed. `microvm demo` is the older
# one-shot variant (same guest, through the library directly).
set -euo pipefail
cd "$(dirname "$0")/.."

env_file=$(bash scripts/provision-test-assets.sh | tail -n 1)
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a
swift build --product microvm
swift build --product microvm-monitor  # the per-VM monitor `microvm run` starts
microvm=.build/debug/microvm
"$microvm" doctor | grep -E '^\[(FAIL|warn)\]|failures$' || true
id="demo-$$"
{ sleep 2; echo "hello from microvm"; sleep 1.5; } | "$microvm" run --id "$id" --kernel "$MICROVM_GUEST_KERNEL" \
    --boot-arg console=ttyS0 --boot-arg microvm.heartbeat_ms=200 --memory 64 "$@" &
run=$!
sleep 4
kill -TERM "$run"
status=0
wait "$run" || status=$?
echo "[demo] microvm run exited $status (0: the VM stopped cleanly); VMs left: $("$microvm" ls -q | wc -l)"
exit "$status"
