# Shared by scripts/run, scripts/test and scripts/bench: install what is missing, build the
# loader and the image. Sourced, not run. Everything here is idempotent and quiet when there is
# nothing to do.

set -euo pipefail

ROOT="$(cd -P "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLCHAIN="$(sed -n 's/^channel = "\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")"
TARGET=x86_64-unknown-none
OUT="$ROOT/target/image"
LOADER="$OUT/hermitage-boot.elf32"
IMAGE="${HERMITAGE_IMAGE:-$OUT/hermitage.elf}"

log() { printf '%s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root for: $*"; return 1; fi
}

apt_install() { # packages...
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]} (apt-get)"
    as_root apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_rust() {
    if ! command -v rustup >/dev/null; then
        log "rustup is missing: install it from your distribution or rustup.rs first"; return 1
    fi
    # RUSTUP_AUTO_INSTALL=0 on these machines: install the pinned toolchain explicitly.
    if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1 \
        || ! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep -q '^rust-src' \
        || ! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep -q '^llvm-tools' \
        || ! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep -q '^clippy'; then
        log "installing Rust $TOOLCHAIN with rust-src, llvm-tools, clippy, rustfmt (rustup)"
        rustup toolchain install "$TOOLCHAIN" --profile minimal \
            -c rust-src -c llvm-tools -c clippy -c rustfmt >/dev/null
    fi
}

# defmt-print decodes the `trace` feature's COM2 records (scripts/trace, scripts/bench).
ensure_defmt_print() {
    command -v defmt-print >/dev/null && return 0
    ensure_rust
    log "installing defmt-print (cargo install)"
    cargo +"$TOOLCHAIN" install defmt-print --locked --quiet
}

ensure_qemu() { command -v qemu-system-x86_64 >/dev/null || apt_install qemu-system-x86; }

llvm_tool() { # name
    local sysroot; sysroot="$(rustup run "$TOOLCHAIN" rustc --print sysroot)"
    echo "$sysroot/lib/rustlib/x86_64-unknown-linux-gnu/bin/$1"
}

# Build the loader and the image for x86_64-unknown-none and put them in target/image/.
# build_image [FEATURES [DEST]]: kernel cargo features (e.g. "trace", "minimal"; default none)
# and where the image goes (default target/image/hermitage.elf).
build_image() {
    local features="${1:-}" dest="${2:-$IMAGE}"
    ensure_rust
    log "building loader and image (release, $TARGET${features:+, features: $features})"
    # One cargo call per binary: built together, cargo would unify the features of their shared
    # dependencies (e.g. hashbrown's `nightly` from the kernel) across both.
    local pkg
    for pkg in hermitage-boot hermitage; do
        local feat=()
        [ "$pkg" = hermitage ] && [ -n "$features" ] && feat=(--features "$features")
        # Hermit logs its boot arguments and the whole device tree at level info, and with them
        # an api_token= passed on the command line: keep its log at warnings and errors
        # (read at compile time by hermit-kernel's logging.rs).
        (cd "$ROOT" && HERMIT_LOG_LEVEL_FILTER=warn RUSTFLAGS="-Zmutable-noalias=no" cargo +"$TOOLCHAIN" build --release --locked \
            --target "$TARGET" -Zbuild-std=core,alloc -Zbuild-std-features=compiler-builtins-mem \
            -p "$pkg" "${feat[@]}" ${CARGO_QUIET:+--quiet})
    done
    mkdir -p "$OUT"
    "$(llvm_tool llvm-objcopy)" -O elf32-i386 "$ROOT/target/$TARGET/release/hermitage-boot" "$LOADER"
    cp "$ROOT/target/$TARGET/release/hermitage" "$dest"
}

# Can this host run the image under KVM with nested virtualization?
kvm_usable() {
    [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
    grep -qE '^flags.*\b(vmx|svm)\b' /proc/cpuinfo || return 1
    local n
    for n in /sys/module/kvm_intel/parameters/nested /sys/module/kvm_amd/parameters/nested; do
        [ -r "$n" ] && grep -qiE '^(1|y)' "$n" && return 0
    done
    return 1
}

# qemu_args PORT SMP MEM ACCEL APPEND REBOOT -> prints the QEMU argument list, one per line.
# REBOOT=1 lets a machine reset reboot the image (as real hardware does); 0 makes QEMU exit.
qemu_args() {
    local port="$1" smp="$2" mem="$3" accel="$4" append="$5" reboot="${6:-1}"
    # TCG cannot provide some of the EPYC model's features (NRIPS among them) and warns about
    # each on every boot; name them off so the console shows only what matters.
    local cpu=EPYC,-nrip-save,-topoext,-xsavec,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw
    [ "$accel" = kvm ] && cpu=host
    printf '%s\n' -machine q35 -accel "$accel" -cpu "$cpu" -smp "$smp" -m "${mem}M" \
        -display none -vga none -serial stdio -monitor none \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:8080" \
        -device virtio-net-pci,netdev=n0,disable-legacy=on \
        -kernel "$LOADER" -initrd "$IMAGE" -append "-- $append"
    # Extra QEMU arguments, whitespace-separated (scripts/bench: -icount, a COM2 trace file).
    [ -z "${HERMITAGE_QEMU_EXTRA:-}" ] || printf '%s\n' ${HERMITAGE_QEMU_EXTRA}
    [ "$reboot" = 1 ] || printf '%s\n' -no-reboot
}

# The third-party API tools of the hostile suite, in a venv under target/ (pip from PyPI):
# openapi-spec-validator checks net/openapi.yaml against the OpenAPI 3.0 schema; schemathesis
# drives the booted image from the document. Versions pinned; prints the venv's bin directory.
API_TOOLS="$ROOT/target/api-tools"
ensure_api_tools() {
    local want="openapi-spec-validator==0.9.0 schemathesis==4.32.5"
    if [ ! -f "$API_TOOLS/.installed" ] || [ "$(cat "$API_TOOLS/.installed")" != "$want" ]; then
        python3 -m venv "$API_TOOLS" >/dev/null 2>&1 || { apt_install python3-venv; python3 -m venv "$API_TOOLS"; }
        log "installing $want (pip, into target/api-tools)"
        "$API_TOOLS/bin/pip" install -q $want >&2
        echo "$want" >"$API_TOOLS/.installed"
    fi
    echo "$API_TOOLS/bin"
}
