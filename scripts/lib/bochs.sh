# Bochs: the VMX path. QEMU's software CPU has no VMX; Bochs emulates it. Bochs boots from a
# CD image, so we build a GRUB ISO holding the loader and the image. Sourced after common.sh.

BOCHS_DIR="$ROOT/target/bochs"

ensure_bochs() {
    apt_install bochs bochsbios vgabios grub-pc-bin grub-common xorriso mtools
}

# bochs_iso APPEND -> builds target/bochs/hermitage.iso with the kernel command line APPEND.
bochs_iso() {
    local append="$1" iso_root="$BOCHS_DIR/iso"
    rm -rf "$iso_root"
    mkdir -p "$iso_root/boot/grub"
    cp "$LOADER" "$iso_root/boot/hermitage-boot.elf32"
    cp "$IMAGE" "$iso_root/boot/hermitage.elf"
    cat >"$iso_root/boot/grub/grub.cfg" <<CFG
set timeout=0
set default=0
menuentry "hermitage" {
    multiboot /boot/hermitage-boot.elf32 -- $append
    module /boot/hermitage.elf
    boot
}
CFG
    grub-mkrescue -o "$BOCHS_DIR/hermitage.iso" "$iso_root" >"$BOCHS_DIR/grub-mkrescue.log" 2>&1
}

# bochs_slirp PORT -> prints Bochs' slirp configuration: QEMU's user-network layout (the image
# takes 10.0.2.15 by DHCP) and the endpoint forwarded to 127.0.0.1:PORT.
bochs_slirp() {
    local port="$1"
    cat <<CFG
# slirp config
hostfwd = tcp:127.0.0.1:${port}-:8080
CFG
}

# bochs_config SMP MEM MODEL SERIAL_FILE -> prints a bochsrc. The e1000 NIC (our driver) sits
# on Bochs' built-in slirp network configured by slirp.conf next to it.
bochs_config() {
    local smp="$1" mem="$2" model="$3" serial="$4"
    cat <<CFG
megs: $mem
cpu: model=$model, count=$smp, ips=80000000, reset_on_triple_fault=0, ignore_bad_msrs=1
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
pci: enabled=1, chipset=i440fx, slot1=e1000
e1000: enabled=1, mac=52:54:00:12:34:56, ethmod=slirp, script=$BOCHS_DIR/slirp.conf
ata0-master: type=cdrom, path=$BOCHS_DIR/hermitage.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$serial
# No display here: RFB with no wait for a viewer. Sound off (its mixer thread aborts).
display_library: rfb, options="timeout=0"
speaker: enabled=0
sound: driver=dummy
clock: sync=none
log: $BOCHS_DIR/bochs.log
panic: action=fatal
error: action=report
info: action=ignore
debug: action=ignore
CFG
}

# exec_bochs SMP MEM MODEL APPEND PORT: boot the image in Bochs, the serial console on stdout,
# the endpoint on 127.0.0.1:PORT.
# Bochs ends when the image powers off (port 0x8900 "Shutdown") or on SIGTERM/SIGINT.
exec_bochs() {
    local smp="$1" mem="$2" model="$3" append="$4" port="$5"
    # One directory per endpoint port, so several Bochs runs can coexist.
    BOCHS_DIR="$BOCHS_DIR/$port"
    mkdir -p "$BOCHS_DIR"
    bochs_iso "$append"
    local serial="$BOCHS_DIR/serial.log"
    : >"$serial"
    bochs_slirp "$port" >"$BOCHS_DIR/slirp.conf"
    bochs_config "$smp" "$mem" "$model" "$serial" >"$BOCHS_DIR/bochsrc"
    # Debian's Bochs includes the debugger: tell it to continue, and to quit at the end.
    printf 'c\nquit\n' >"$BOCHS_DIR/debugger.rc"
    log "Bochs: model $model, $smp CPUs, ${mem} MiB (VMX emulated; slow: ~10 s to boot)"
    tail -n +1 -f "$serial" &
    BOCHS_TAIL_PID=$!
    (cd "$BOCHS_DIR" && exec bochs-bin -q -f bochsrc -rc debugger.rc </dev/null >"$BOCHS_DIR/bochs.out" 2>&1) &
    BOCHS_PID=$!
    trap 'kill $BOCHS_PID 2>/dev/null; wait $BOCHS_PID 2>/dev/null; kill $BOCHS_TAIL_PID 2>/dev/null; rm -f "$BOCHS_DIR/hermitage.iso"; exit 130' INT TERM
    local rc=0
    wait "$BOCHS_PID" || rc=$?
    sleep 0.5
    kill "$BOCHS_TAIL_PID" 2>/dev/null
    rm -f "$BOCHS_DIR/hermitage.iso"
    exit "$rc"
}
