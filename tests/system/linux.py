"""Linux guest baseline: Debian's stock kernel and the busybox initramfs of scripts/linux-guest,
booted directly by QEMU TCG with the device set of Hermitage's first Linux milestone (-M pc, no
local APIC: PIT + 8259 PIC + 16550 on IRQ 4; `scripts/linux-guest --qemu`).

It proves the initramfs reaches an interactive shell on ttyS0 with the recommended kernel
command line, and its time to the shell prompt is the baseline of the Linux boot-time benchmark
(Hermitage's create-to-prompt time is to be compared with it). Standard library only.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import BOCHS, ROOT, Hermitage, run_suite, slow, stop_group  # noqa: E402
import json  # noqa: E402

LINUX_GUEST = os.path.join(ROOT, "scripts", "linux-guest")
PROMPT = "hermitage-linux# "
# Decompressing an 8 MB xz kernel under TCG on a loaded 2-core host takes a while.
BOOT_TIMEOUT = float(os.environ.get("HERMITAGE_LINUX_BOOT_TIMEOUT", "150"))


class DirectQemu:
    """`scripts/linux-guest --qemu` with its serial console on pipes."""

    def __init__(self, *args):
        self.start = time.monotonic()
        self.proc = subprocess.Popen([LINUX_GUEST, "--qemu", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.out = bytearray()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            chunk = self.proc.stdout.read1(4096)
            if not chunk:
                return
            with self.lock:
                self.out.extend(chunk)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        stop_group(self.proc)
        return False

    def text(self):
        with self.lock:
            return self.out.decode("utf-8", errors="replace")

    def wait_for(self, pattern, timeout, after=0):
        """Wait for `pattern` in the console output from character `after` on; returns the match."""
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self.text(), after)
            if m:
                return m
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader drain the pipe
                raise AssertionError(f"QEMU exited ({self.proc.returncode}) before /{pattern}/:\n"
                                     f"{self.text()[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"timeout ({timeout}s) waiting for /{pattern}/:\n{self.text()[-4000:]}")

    def run(self, command, pattern, timeout=30):
        """Type `command` into the shell and wait for `pattern` in what comes back after it."""
        after = len(self.text())
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        m = self.wait_for(pattern, timeout, after)
        # And the next prompt, so that the following command is typed into a ready shell.
        self.wait_for(re.escape(PROMPT), timeout, m.end())
        return m


def test_direct_qemu_boot_reaches_shell():
    """The stock kernel boots to /init and an interactive busybox shell on ttyS0; the shell runs
    typed commands; the timer and the UART interrupt go through the 8259 (no APIC); reboot -f
    resets through the keyboard controller (reboot=k), which ends QEMU (-no-reboot)."""
    # Fetch and build first (cached under target/linux/), so the boot time measured below is
    # the boot alone.
    paths = subprocess.run([LINUX_GUEST, "--print"], check=True, capture_output=True, text=True,
                           timeout=900).stdout.split()
    assert len(paths) == 2 and all(os.path.getsize(p) > 0 for p in paths), paths
    with DirectQemu() as vm:
        vm.wait_for(r"Linux version 6\.\d+\.\S+", BOOT_TIMEOUT)
        vm.wait_for(r"^hermitage-linux: init\r?$", BOOT_TIMEOUT)
        vm.wait_for(re.escape(PROMPT), BOOT_TIMEOUT)
        to_prompt = time.monotonic() - vm.start
        console = vm.text()
        guest = re.findall(r"^\[\s*(\d+\.\d+)\] Run /init as init process", console, re.MULTILINE)
        assert "tsc_early_khz=" in console, console[-3000:]
        assert re.search(r"clocksource: Switched to clocksource tsc", console), console[-4000:]
        print(f"    direct QEMU TCG boot to the shell prompt: {to_prompt:.1f} s host time "
              f"(/init at {guest[0] if guest else '?'} s guest time)", flush=True)

        m = vm.run("uname -a", r"^Linux \S+ (\d+\.\d+\.\d+-\d+-amd64) .*x86_64.*$")
        assert m.group(1).startswith("6."), m.group(0)
        vm.run("echo $((6*7))", r"^42\r?$")
        # The milestone's interrupt path: PIT on IRQ 0 and the 16550 on IRQ 4, both on the PIC.
        irqs = vm.run("cat /proc/interrupts", r"^\s*4:\s+(\d+)\s+XT-PIC\s+ttyS0\s*\r?$")
        assert int(irqs.group(1)) > 0, irqs.group(0)
        assert re.search(r"^\s*0:\s+[1-9]\d*\s+XT-PIC\s+timer", vm.text(), re.MULTILINE), vm.text()[-2000:]
        vm.run("sleep 1; echo slept", r"^slept\r?$", timeout=30)

        vm.proc.stdin.write(b"reboot -f\n")
        vm.proc.stdin.flush()
        try:
            code = vm.proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"QEMU still running 60 s after reboot -f:\n{vm.text()[-2000:]}")
        assert code == 0, (code, vm.text()[-2000:])


def test_direct_qemu_pvh_boot_reaches_shell():
    """The same kernel decompressed on the host (target/linux/vmlinux), booted by QEMU through
    its Xen PVH entry: no decompression in the guest. Prints its time to the prompt next to the
    bzImage's."""
    subprocess.run([LINUX_GUEST, "--print"], check=True, capture_output=True, timeout=900)
    with DirectQemu("--pvh") as vm:
        vm.wait_for(re.escape(PROMPT), BOOT_TIMEOUT)
        to_prompt = time.monotonic() - vm.start
        print(f"    direct QEMU TCG PVH boot (vmlinux) to the shell prompt: {to_prompt:.1f} s host time",
              flush=True)
        m = vm.run("uname -r", r"^(\d+\.\d+\.\d+-\d+-amd64)\r?$")
        assert m.group(1).startswith("6."), m.group(0)
        vm.run("echo $((6*7))", r"^42\r?$")


class LinuxVm:
    """A Linux VM in a booted Hermitage, driven through the API as a person would with
    scripts/linux-guest --boot: bzImage and initramfs uploaded, console read and typed into."""

    def __init__(self, hv, name="linux", memory_mib=256, **extra):
        self.hv = hv
        kernel, initrd = subprocess.run([LINUX_GUEST, "--print"], check=True, capture_output=True,
                                        text=True, timeout=900).stdout.split()
        doc = self.call("POST", "/v1/vms", 201, json.dumps(dict(
            name=name, image="uploaded", memory_mib=memory_mib, local_apic=False, **extra)).encode(),
            "application/json")
        self.id = doc["id"]
        for route, path in (("image", kernel), ("initrd", initrd)):
            with open(path, "rb") as f:
                self.call("PUT", f"/v1/vms/{self.id}/{route}", 200, f.read(), "application/octet-stream")
        self.start = time.monotonic()
        self.call("POST", f"/v1/vms/{self.id}/start", 200)

    def call(self, method, path, expect, body=None, ctype=None):
        status, _, raw = self.hv.request(method, path, body=body,
                                         headers={"Content-Type": ctype} if ctype else {}, timeout=120)
        doc = json.loads(raw) if raw else None
        assert status == expect, (method, path, status, doc)
        return doc

    def doc(self):
        return self.call("GET", f"/v1/vms/{self.id}", 200)

    def text(self):
        status, _, data = self.hv.request("GET", f"/v1/vms/{self.id}/console?offset=0", timeout=30)
        assert status == 200, status
        return data.decode("utf-8", errors="replace")

    def wait_for(self, pattern, timeout, after=0):
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + slow(timeout)
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            m = rx.search(text, after)
            if m:
                return m
            d = self.doc()
            if d["state"] not in ("running", "paused"):
                raise AssertionError(f"vm {d['state']} ({d['reason']}) before /{pattern}/:\n{text[-4000:]}")
            time.sleep(0.5)
        raise AssertionError(f"timeout ({timeout}s) waiting for /{pattern}/:\n{text[-4000:]}")

    def type(self, data):
        self.call("POST", f"/v1/vms/{self.id}/console", 200, data, "application/octet-stream")

    def run(self, command, pattern, timeout=60):
        after = len(self.text())
        self.type(command.encode() + b"\n")
        m = self.wait_for(pattern, timeout, after)
        self.wait_for(re.escape(PROMPT), timeout, m.end())
        return m


def test_linux_in_hermitage_reaches_a_shell_and_reboots():
    """Debian's kernel as a Hermitage VM (legacy PC: PIT, 8259 pair, 16550 on IRQ 4): boots to
    the busybox prompt; typed commands run; the timer and serial interrupts count in
    /proc/interrupts; sleep 1 takes about a second of guest time; reboot -f resets through the
    one reset path (keyboard controller) and Linux boots again; poweroff -f leaves the VM
    stopped with its reason."""
    with Hermitage(smp=2, memory=1024, timeout=120) as hv:
        vm = LinuxVm(hv)
        vm.wait_for(r"Linux version 6\.\d+\.\S+", BOOT_TIMEOUT)
        vm.wait_for(re.escape(PROMPT), BOOT_TIMEOUT)
        to_prompt = time.monotonic() - vm.start
        print(f"    Hermitage ({'VMX, Bochs' if BOCHS else 'SVM, QEMU TCG'}) Linux start to shell "
              f"prompt: {to_prompt:.1f} s host time", flush=True)
        m = vm.run("uname -a", r"^Linux \S+ (\d+\.\d+\.\d+-\d+-amd64) .*x86_64.*$")
        assert m.group(1).startswith("6."), m.group(0)
        irqs = vm.run("cat /proc/interrupts", r"^\s*4:\s+(\d+)\s+XT-PIC\s+ttyS0\s*\r?$")
        assert int(irqs.group(1)) > 0, irqs.group(0)
        assert re.search(r"^\s*0:\s+[1-9]\d*\s+XT-PIC\s+timer", vm.text(), re.MULTILINE), vm.text()[-2000:]
        t = vm.run("date +%s; sleep 1; date +%s", r"^(\d+)\r?\n(\d+)\r?$")
        assert 1 <= int(t.group(2)) - int(t.group(1)) <= 2, t.group(0)
        vm.run("dmesg | grep -c .", r"^(\d+)\r?$")
        boots = vm.doc()["resets"]
        vm.type(b"reboot -f\n")
        after = len(vm.text())
        vm.wait_for(r"Linux version 6\.\d+", BOOT_TIMEOUT, after)
        vm.wait_for(re.escape(PROMPT), BOOT_TIMEOUT, after)
        d = vm.doc()
        assert d["resets"] == boots + 1 and d["stats"]["resets"]["keyboard_controller"] >= 1, d
        vm.run("echo $((6*7))", r"^42\r?$")
        vm.type(b"poweroff -f\n")
        deadline = time.monotonic() + slow(60)
        while vm.doc()["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
        d = vm.doc()
        assert d["state"] in ("stopped", "crashed") and d["reason"], d


def test_two_linux_vms_and_a_small_guest_are_unaffected_by_a_crash():
    """Two Linux VMs boot at once next to a spinner; one is crashed from inside (sysrq c: a
    kernel panic, which with panic=-1 reboots through the keyboard controller); the other keeps
    answering, the spinner keeps ticking, and the crashed one boots again.

    One host CPU, so the three guests time-share it: with two host CPUs running Linux guests at
    once, QEMU 7.2's multi-threaded TCG now and then raises a not-present #PF on the host's first
    instruction after #VMEXIT (1 run in 3-6 here, twice in CI). Checked at the fault with QMP:
    the host page tables map that page (a present 2 MiB PDE), CR3/CR0/CR4/EFER are the host's,
    and the exit was a plain IOIO exit; the emulator walked something else. Nothing of ours
    runs between VMRUN's exit and that instruction."""
    with Hermitage(smp=1, memory=1024, timeout=120) as hv:
        a, b = LinuxVm(hv, "linux-a"), LinuxVm(hv, "linux-b")
        spin = a.call("POST", "/v1/vms", 201, json.dumps(dict(
            name="spin", image="spinner", start=True)).encode(), "application/json")["id"]
        for vm in (a, b):
            vm.wait_for(re.escape(PROMPT), 2 * BOOT_TIMEOUT)
        a.run("echo $((6*7))", r"^42\r?$")
        b.run("echo $((6*8))", r"^48\r?$")
        after = len(a.text())
        a.type(b"echo c > /proc/sysrq-trigger\n")
        a.wait_for(r"Kernel panic", 60, after)
        # B answers while A reboots; the spinner ticks on.
        b.run("echo $((7*7))", r"^49\r?$")
        a.wait_for(r"Linux version 6\.\d+", BOOT_TIMEOUT, after)
        a.wait_for(re.escape(PROMPT), BOOT_TIMEOUT, after)
        assert a.doc()["resets"] >= 1, a.doc()
        a.run("echo $((6*9))", r"^54\r?$")
        b.run("uname -r", r"^6\.\d+\.\d+-\d+-amd64\r?$")
        status, _, data = hv.request("GET", f"/v1/vms/{spin}/console?offset=0")
        assert status == 200 and b"spinner: tick 1" in data, data[-500:]
        assert b.doc()["state"] == "running" and b.doc()["resets"] == 0, b.doc()


TESTS = [test_direct_qemu_boot_reaches_shell, test_direct_qemu_pvh_boot_reaches_shell,
         test_linux_in_hermitage_reaches_a_shell_and_reboots,
         test_two_linux_vms_and_a_small_guest_are_unaffected_by_a_crash]

if BOCHS:
    # The direct-QEMU baselines do not depend on the emulator; two Linux VMs are too slow for
    # Bochs in CI.
    TESTS = [test_linux_in_hermitage_reaches_a_shell_and_reboots]

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(1 if run_suite("linux", TESTS, sys.argv[1:]) else 0)
