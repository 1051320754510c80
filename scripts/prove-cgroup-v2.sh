#!/usr/bin/env bash
# prove-cgroup-v2.sh - prove that a jailed Firecracker gets cgroup v2 limits, then leaves
# nothing behind. Runs the real jailer the way the microvm library does (MicroVMHost/Jail).
#
# Usage: scripts/prove-cgroup-v2.sh FIRECRACKER JAILER [GUEST_KERNEL]
#
# Needs: a pure cgroup v2 host (cgroup2 mounted at /sys/fs/cgroup with the cpu, memory and
# pids controllers available), root, /dev/kvm. No network. With GUEST_KERNEL (the project's
# test guest, guest/build.sh) the VM also boots and its console banner is checked; without it
# Firecracker only serves its API socket, which is enough for the cgroup checks.
#
# What it does:
#   1. runs `jailer ... --cgroup-version 2 --parent-cgroup P --cgroup cpu.max=50000 100000
#      --cgroup memory.max=M --cgroup pids.max=16 --new-pid-ns -- --api-sock ...`
#   2. checks: jailer exit 0; the pid file; the VMM runs as 123:100 as PID 1 of its own PID
#      namespace; /proc/PID/cgroup is 0::/P/ID; <v2 root>/P/ID holds the VMM in cgroup.procs and
#      the three values; the parent's cgroup.subtree_control enables cpu memory pids; the
#      guest banner (with a kernel)
#   3. tears down: SIGKILL (SIGTERM is dropped for a PID-namespace init), waits until the VMM
#      is reaped, removes the jail directory and the leaf and parent cgroups
#   4. checks nothing remains: no process, no jail directory, no cgroup directory
# Prints one PASS/FAIL line per check and a summary; exits 0 only if every check passed.
set -uo pipefail

usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

if [[ $# -lt 2 || $# -gt 3 || ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 2
fi

FIRECRACKER=$1
JAILER=$2
KERNEL=${3:-}
CGROUP_ROOT=/sys/fs/cgroup
UID_VM=123
GID_VM=100
GUEST_MIB=64
# The library's automatic headroom: guest + 64 MiB + guest/64.
MEMORY_MAX=$(( (GUEST_MIB + 64 + GUEST_MIB / 64) * 1024 * 1024 ))
CPU_MAX="50000 100000"
PIDS_MAX=16
ID="v2proof-$$-$RANDOM"
PARENT="microvm-v2proof-$$"

passed=0
failed=0
pass() { printf 'PASS %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL %s\n' "$*"; failed=$((failed + 1)); }
check() { # check "description" command...
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
summary() {
    printf '%s: %d passed, %d failed\n' "$([[ $failed -eq 0 ]] && echo PASS || echo FAIL)" "$passed" "$failed"
}
die() {
    fail "$*"
    summary
    exit 1
}

# ------------------------------------------------------------------ prerequisites

[[ $(id -u) -eq 0 ]] || die "prerequisite: must run as root (the jailer needs it)"
[[ -c /dev/kvm ]] || die "prerequisite: /dev/kvm is missing"
[[ -x $FIRECRACKER && -f $FIRECRACKER ]] || die "prerequisite: $FIRECRACKER is not an executable file"
[[ -x $JAILER && -f $JAILER ]] || die "prerequisite: $JAILER is not an executable file"
[[ -z $KERNEL || -r $KERNEL ]] || die "prerequisite: guest kernel $KERNEL is not readable"
fstype=$(stat -fc %T "$CGROUP_ROOT" 2>/dev/null)
[[ $fstype == cgroup2fs ]] || die "prerequisite: $CGROUP_ROOT is $fstype, not cgroup2fs (not a pure cgroup v2 host)"
for controller in cpu memory pids; do
    grep -qw "$controller" "$CGROUP_ROOT/cgroup.controllers" \
        || die "prerequisite: controller $controller not in $CGROUP_ROOT/cgroup.controllers"
done
pass "prerequisites: root, /dev/kvm, cgroup2 at $CGROUP_ROOT with cpu memory pids"
printf 'INFO %s\n' "$("$JAILER" --version 2>&1 | head -1)" "$("$FIRECRACKER" --version 2>&1 | head -1)"

WORK=$(mktemp -d /tmp/prove-cgroup-v2.XXXXXX)
BASE=$WORK/base
mkdir -p "$BASE"
chmod 0755 "$WORK" "$BASE"

# Jailer 1.12 wants "firecracker" in the exec file name; the jail dir is named after it.
EXEC=$(readlink -f "$FIRECRACKER")
if [[ $(basename "$EXEC") != *firecracker* ]]; then
    cp "$EXEC" "$WORK/firecracker"
    EXEC=$WORK/firecracker
fi
EXEC_NAME=$(basename "$EXEC")
JAIL=$BASE/$EXEC_NAME/$ID
ROOT=$JAIL/root
LEAF=$CGROUP_ROOT/$PARENT/$ID
VMM_PID=

cleanup() {
    if [[ -n $VMM_PID ]] && kill -0 "$VMM_PID" 2>/dev/null; then kill -KILL "$VMM_PID" 2>/dev/null; fi
    for _ in $(seq 100); do [[ -d /proc/$VMM_PID && -n $VMM_PID ]] || break; sleep 0.05; done
    rm -rf --one-file-system "$WORK" 2>/dev/null
    rmdir "$LEAF" 2>/dev/null
    rmdir "$CGROUP_ROOT/$PARENT" 2>/dev/null
    true
}
trap cleanup EXIT

# ------------------------------------------------------------------ stage (what the library stages)

mkdir -p "$ROOT"
chmod 0700 "$ROOT"
FC_ARGS=(--api-sock /run/firecracker.socket)
if [[ -n $KERNEL ]]; then
    install -d -m 0700 -o "$UID_VM" -g "$GID_VM" "$ROOT/kernel" "$ROOT/logs"
    # Hard link when on the same filesystem (owner and mode of the host file untouched), else copy.
    ln "$KERNEL" "$ROOT/kernel/guest.elf" 2>/dev/null || install -m 0400 -o "$UID_VM" -g "$GID_VM" "$KERNEL" "$ROOT/kernel/guest.elf"
    install -m 0600 -o "$UID_VM" -g "$GID_VM" /dev/null "$ROOT/logs/firecracker.log"
    cat >"$ROOT/vm.json" <<EOF
{"boot-source":{"kernel_image_path":"/kernel/guest.elf","boot_args":"microvm.mode=normal microvm.heartbeat_ms=100"},
 "machine-config":{"vcpu_count":1,"mem_size_mib":$GUEST_MIB},"drives":[]}
EOF
    chmod 0644 "$ROOT/vm.json"
    FC_ARGS+=(--config-file /vm.json --log-path /logs/firecracker.log)
fi

# ------------------------------------------------------------------ launch

JAILER_ARGS=(
    --id "$ID" --exec-file "$EXEC" --uid "$UID_VM" --gid "$GID_VM" --chroot-base-dir "$BASE"
    --cgroup-version 2 --parent-cgroup "$PARENT"
    --cgroup "cpu.max=$CPU_MAX" --cgroup "memory.max=$MEMORY_MAX" --cgroup "pids.max=$PIDS_MAX"
    --new-pid-ns -- "${FC_ARGS[@]}"
)
printf 'INFO %q ' "$JAILER" "${JAILER_ARGS[@]}"
printf '\n'
"$JAILER" "${JAILER_ARGS[@]}" >"$WORK/console.txt" 2>"$WORK/stderr.txt" </dev/null
status=$?
if [[ $status -ne 0 ]]; then
    sed 's/^/INFO jailer stderr: /' "$WORK/stderr.txt"
    die "jailer exited with status $status (expected 0 with --new-pid-ns)"
fi
pass "jailer exited 0"

for _ in $(seq 250); do
    [[ -s $ROOT/$EXEC_NAME.pid ]] && break
    sleep 0.02
done
VMM_PID=$(cat "$ROOT/$EXEC_NAME.pid" 2>/dev/null)
[[ $VMM_PID =~ ^[0-9]+$ ]] || die "pid file $ROOT/$EXEC_NAME.pid did not appear within 5 s"
pass "pid file names VMM pid $VMM_PID"
check "VMM $VMM_PID is alive" kill -0 "$VMM_PID"

# ------------------------------------------------------------------ checks

status_file=$(cat "/proc/$VMM_PID/status" 2>/dev/null)
check "VMM runs as uid $UID_VM" grep -qE "^Uid:\s+$UID_VM\s+$UID_VM\s+$UID_VM\s+$UID_VM$" <<<"$status_file"
check "VMM runs as gid $GID_VM" grep -qE "^Gid:\s+$GID_VM\s+$GID_VM\s+$GID_VM\s+$GID_VM$" <<<"$status_file"
check "VMM is PID 1 of its own PID namespace" grep -qE '^NSpid:\s+[0-9]+\s+1$' <<<"$status_file"

membership=$(cat "/proc/$VMM_PID/cgroup" 2>/dev/null)
printf 'INFO /proc/%s/cgroup: %s\n' "$VMM_PID" "$membership"
check "VMM is in the v2 cgroup /$PARENT/$ID" grep -qx "0::/$PARENT/$ID" <<<"$membership"
check "$LEAF exists" test -d "$LEAF"
check "$LEAF/cgroup.procs lists the VMM" grep -qx "$VMM_PID" "$LEAF/cgroup.procs"
value=$(cat "$LEAF/cpu.max" 2>/dev/null)
check "cpu.max is '$CPU_MAX' (got '$value')" test "$value" = "$CPU_MAX"
value=$(cat "$LEAF/memory.max" 2>/dev/null)
page=$(getconf PAGESIZE)
check "memory.max is $MEMORY_MAX (got $value)" test "$value" = "$(( MEMORY_MAX / page * page ))"
value=$(cat "$LEAF/pids.max" 2>/dev/null)
check "pids.max is $PIDS_MAX (got $value)" test "$value" = "$PIDS_MAX"
subtree=$(cat "$CGROUP_ROOT/$PARENT/cgroup.subtree_control" 2>/dev/null)
for controller in cpu memory pids; do
    check "$CGROUP_ROOT/$PARENT/cgroup.subtree_control enables $controller" grep -qw "$controller" <<<"$subtree"
done
printf 'INFO pids.current=%s memory.current=%s\n' "$(cat "$LEAF/pids.current" 2>/dev/null)" "$(cat "$LEAF/memory.current" 2>/dev/null)"

if [[ -n $KERNEL ]]; then
    for _ in $(seq 250); do
        grep -q 'microvm-guest: banner' "$WORK/console.txt" && break
        sleep 0.02
    done
    check "guest banner on the console" grep -q 'microvm-guest: banner' "$WORK/console.txt"
fi
check "API socket exists at $ROOT/run/firecracker.socket" test -S "$ROOT/run/firecracker.socket"
printf 'INFO jail root: %s\n' "$(cd "$ROOT" && ls -A | tr '\n' ' ')"

# ------------------------------------------------------------------ teardown

kill -KILL "$VMM_PID"
gone=0
for _ in $(seq 500); do # up to 10 s: the VMM's parent (init here) must reap it
    if [[ ! -d /proc/$VMM_PID ]]; then gone=1; break; fi
    sleep 0.02
done
if [[ $gone -eq 0 ]]; then
    state=$(awk '{print $3}' "/proc/$VMM_PID/stat" 2>/dev/null)
    printf 'INFO VMM state after SIGKILL: %s (Z: a zombie its parent, PPid %s, does not reap; a supervisor should be a child subreaper)\n' \
        "$state" "$(awk '/^PPid:/{print $2}' "/proc/$VMM_PID/status" 2>/dev/null)"
fi
check "VMM $VMM_PID is gone (killed and reaped)" test $gone -eq 1
rm -rf --one-file-system "$JAIL"
rmdir "$BASE/$EXEC_NAME" 2>/dev/null
removed=0
for _ in $(seq 100); do
    if rmdir "$LEAF" 2>/dev/null || [[ ! -d $LEAF ]]; then removed=1; break; fi
    sleep 0.02
done
check "cgroup leaf $LEAF removed" test $removed -eq 1
rmdir "$CGROUP_ROOT/$PARENT" 2>/dev/null

check "no process left" test ! -d "/proc/$VMM_PID"
check "no jail directory left ($JAIL)" test ! -e "$JAIL"
check "no cgroup leaf left" test ! -e "$LEAF"
check "no parent cgroup left" test ! -e "$CGROUP_ROOT/$PARENT"
VMM_PID=

summary
[[ $failed -eq 0 ]]
