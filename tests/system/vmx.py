"""System tests on Bochs (the VMX path: Bochs emulates VMX, QEMU's software CPU does not).
Run: scripts/test vmx [name-filter...]

Bochs runs the same image from a GRUB ISO. Its NICs (e1000, ne2k, pnic) have no driver in the
image yet, so these tests drive the image through the kernel command line and read the serial
console."""
import re
import sys

from harness import Hermitage, run_suite


def test_boots_and_detects_vmx_ept_vpid():
    hv = Hermitage(smp=1, append="exit_after_boot", ready=False, bochs=True)
    try:
        hv.wait_exit(240)
        console = hv.console()
        assert re.search(r"cpu 0 up: apic_id=\d+ vendor=intel virt=vmx ept=yes vpid=yes", console), console[-3000:]
        assert "1/1 cpus up" in console, console[-3000:]
        # VMXON through the virt layer; CR4.VMXE read back by the CPU itself.
        assert "cpu 0: vmx enabled, hardware reads vmx" in console, console[-3000:]
        # A real VMLAUNCH of a real-mode guest under EPT: CPUID exit answered, HLT exit,
        # guest registers intact.
        assert "cpu 0 self-test passed: VMLAUNCH round trip, 2 exits" in console, console[-3000:]
        # Bochs' exit status is the same however the run ends; the image says its own.
        assert "hermitage: powering off, exit code 0" in console, console[-3000:]
    finally:
        hv.stop()


def test_bad_command_line_is_refused_in_bochs_too():
    hv = Hermitage(smp=1, append="colour=red", ready=False, bochs=True)
    try:
        hv.wait_exit(240)
        assert "bad command line: unknown option `colour`" in hv.console(), hv.console()[-2000:]
        assert "hermitage: powering off, exit code 2" in hv.console(), hv.console()[-2000:]
    finally:
        hv.stop()


def test_panic_path_turns_vmx_off_before_reset():
    hv = Hermitage(smp=1, append="crash_test", ready=False, bochs=True)
    try:
        hv.wait_for(r"panic: virtualization off on 1/1 cpus", 240)
        console = hv.console()
        assert "cpu 0: vmx enabled, hardware reads vmx" in console, console[-3000:]
    finally:
        hv.stop()


TESTS = [test_boots_and_detects_vmx_ept_vpid, test_bad_command_line_is_refused_in_bochs_too,
         test_panic_path_turns_vmx_off_before_reset]

if __name__ == "__main__":
    sys.exit(1 if run_suite("vmx", TESTS, sys.argv[1:]) else 0)
