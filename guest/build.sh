#!/usr/bin/env bash
# Build the microvm test guest: guest/build.sh OUTDIR
# Produces OUTDIR/microvm-test-guest.elf (static ELF64, entry at 16 MiB) with
# the machine's gcc and ld only. Environment: CC (default gcc), LD (default ld).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

src_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out_dir=$1
CC=${CC:-gcc}
LD=${LD:-ld}

for tool in "$CC" "$LD"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "build.sh: '$tool' not found (install gcc and binutils)" >&2; exit 1; }
done

mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
work=$(mktemp -d "$out_dir/.guest-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

CFLAGS=(
    -std=gnu11 -O2 -Wall -Wextra
    -ffreestanding -fno-builtin -nostdlib -nostdinc -isystem "$("$CC" -print-file-name=include)"
    -m64 -mno-red-zone -mgeneral-regs-only -mcmodel=small
    -fno-pic -fno-pie -fno-stack-protector -fno-stack-clash-protection -fcf-protection=none
    -fno-asynchronous-unwind-tables -fno-unwind-tables -fno-exceptions
    "-ffile-prefix-map=$src_dir=guest"
)

"$CC" "${CFLAGS[@]}" -c "$src_dir/start.S" -o "$work/start.o"
"$CC" "${CFLAGS[@]}" -c "$src_dir/guest.c" -o "$work/guest.o"
"$CC" "${CFLAGS[@]}" -c "$src_dir/virtio.c" -o "$work/virtio.o"
"$LD" -nostdlib -static --no-dynamic-linker --build-id=none -z noexecstack -z max-page-size=4096 \
    -T "$src_dir/link.ld" -o "$work/microvm-test-guest.elf" "$work/start.o" "$work/guest.o" "$work/virtio.o"

mv -f "$work/microvm-test-guest.elf" "$out_dir/microvm-test-guest.elf"
echo "$out_dir/microvm-test-guest.elf"
