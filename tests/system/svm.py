"""System tests on QEMU's software CPU (-cpu EPYC: SVM + NPT): boot, per-CPU bring-up, the
endpoint's first routes, clean shutdown. Run: scripts/test svm [name-filter...]"""
import json
import os
import re
import shutil
import subprocess
import sys

from harness import ROOT, Hermitage, run_suite


def crate_version():
    text = open(os.path.join(ROOT, "Cargo.toml")).read()
    return re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', text, re.M | re.S).group(1)


def check_boot(smp):
    with Hermitage(smp=smp) as hv:
        console = hv.console()
        for i in range(smp):
            assert re.search(rf"cpu {i} up: apic_id=\d+ vendor=amd virt=svm npt=yes nrips=no", console), console
        assert f"{smp}/{smp} cpus up" in console, console
        health = hv.get_json("/v1/health")
        assert health == {"status": "ok", "version": crate_version(), "cpus": smp, "virt": "svm"}, health
        cpus = hv.get_json("/v1/cpus")
        assert [c["id"] for c in cpus] == list(range(smp)), cpus
        assert len({c["apic_id"] for c in cpus}) == smp, "APIC ids must be distinct"
        for c in cpus:
            assert c["online"] is True and c["virt"] == "svm" and c["selftest"] == "passed", c
        one = hv.get_json(f"/v1/cpus/{smp - 1}")
        assert one["id"] == smp - 1 and one["apic_id"] == cpus[-1]["apic_id"], one


def test_boot_1_cpu():
    check_boot(1)


def test_boot_2_cpus():
    check_boot(2)


def test_boot_4_cpus():
    check_boot(4)


def test_errors_are_json():
    with Hermitage(smp=1) as hv:
        err = hv.get_json("/v1/nope", expect=404)
        assert err["error"]["code"] == "not_found" and "/v1/nope" in err["error"]["message"], err
        status, headers, body = hv.request("DELETE", "/v1/health")
        assert status == 405, (status, body)
        assert "GET" in headers.get("allow", ""), headers
        assert json.loads(body)["error"]["code"] == "method_not_allowed"
        err = hv.get_json("/v1/cpus/7", expect=404)
        assert err["error"]["code"] == "cpu_not_found", err
        # Still serving after errors.
        assert hv.get_json("/v1/health")["status"] == "ok"


def test_keep_alive_connection_serves_many():
    import http.client
    with Hermitage(smp=1) as hv:
        conn = http.client.HTTPConnection("127.0.0.1", hv.port, timeout=10)
        for _ in range(50):
            status, _, body = hv.request("GET", "/v1/health", conn=conn)
            assert status == 200 and json.loads(body)["status"] == "ok"
        conn.close()


def test_curl_like_a_person():
    curl = shutil.which("curl")
    assert curl, "curl is not installed (scripts/test installs it)"
    with Hermitage(smp=2) as hv:
        out = subprocess.run([curl, "-sS", "--fail", f"http://127.0.0.1:{hv.port}/v1/health"],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["cpus"] == 2


def test_clean_shutdown_exit_code():
    hv = Hermitage(smp=2, append="exit_after_boot", ready=False)
    try:
        rc = hv.wait_exit(90)
        # Hermit's exit(0) writes 1 to isa-debug-exit, which QEMU turns into (1 << 1) | 1 = 3.
        assert rc == 3, (rc, hv.console()[-2000:])
        assert "2/2 cpus up" in hv.console()
    finally:
        hv.stop()


def test_bad_command_line_is_refused():
    hv = Hermitage(smp=1, append="colour=red", ready=False)
    try:
        rc = hv.wait_exit(90)
        assert rc not in (0, 3), rc
        assert "bad command line: unknown option `colour`" in hv.console(), hv.console()[-2000:]
    finally:
        hv.stop()


def test_svm_on_and_self_tested_on_every_cpu():
    with Hermitage(smp=4) as hv:
        console = hv.console()
        for i in range(4):
            assert f"cpu {i} self-test passed: VMRUN round trip" in console, console[-3000:]
        for c in hv.get_json("/v1/cpus"):
            assert (c["online"], c["virt"], c["users"], c["selftest"], c["last_error"]) == \
                (True, "svm", 1, "passed", None), c


def post(hv, path, expect):
    status, _, body = hv.request("POST", path)
    doc = json.loads(body)
    assert status == expect, (path, status, doc)
    return doc


def test_cpu_offline_online_reads_hardware_back():
    with Hermitage(smp=4) as hv:
        cpu = post(hv, "/v1/cpus/2/offline", 200)
        # EFER.SVME as CPU 2 itself read it, not our bookkeeping; the user keeps its hold.
        assert (cpu["online"], cpu["virt"], cpu["users"]) == (False, "off", 1), cpu
        assert hv.get_json("/v1/cpus/2")["virt"] == "off"
        others = [c for c in hv.get_json("/v1/cpus") if c["id"] != 2]
        assert all(c["virt"] == "svm" and c["online"] for c in others), others
        cpu = post(hv, "/v1/cpus/2/online", 200)
        assert (cpu["online"], cpu["virt"], cpu["selftest"]) == (True, "svm", "passed"), cpu
        assert hv.console().count("cpu 2 self-test passed") == 2, "self-test reruns on online"


def test_cpu_transitions_that_are_not_allowed():
    with Hermitage(smp=2) as hv:
        err = post(hv, "/v1/cpus/0/offline", 409)["error"]
        assert err["reason"] == "serves_endpoint", err
        assert post(hv, "/v1/cpus/1/online", 409)["error"]["reason"] == "already_online"
        post(hv, "/v1/cpus/1/offline", 200)
        assert post(hv, "/v1/cpus/1/offline", 409)["error"]["reason"] == "already_offline"
        assert post(hv, "/v1/cpus/5/offline", 404)["error"]["code"] == "cpu_not_found"
        assert post(hv, "/v1/cpus/x/offline", 400)["error"]["code"] == "invalid_id"
        post(hv, "/v1/cpus/1/online", 200)


def test_last_online_cpu_cannot_go_offline():
    with Hermitage(smp=1) as hv:
        err = post(hv, "/v1/cpus/0/offline", 409)["error"]
        assert err["reason"] == "last_online", err
        assert hv.get_json("/v1/cpus/0")["virt"] == "svm"


def test_reboot_turns_virtualization_off_everywhere_first():
    hv = Hermitage(smp=4)
    try:
        assert post(hv, "/v1/host/reboot", 202) == {"status": "rebooting"}
        rc = hv.wait_exit(30)  # -no-reboot: QEMU exits when the machine resets
        console = hv.console()
        assert "reboot: virtualization off on 4/4 cpus, resetting" in console, console[-2000:]
        assert rc == 0, rc
    finally:
        hv.stop()


def test_panic_path_shoots_down_every_cpu():
    hv = Hermitage(smp=4, append="crash_test", ready=False)
    try:
        rc = hv.wait_exit(60)
        console = hv.console()
        assert "hermitage: PANIC: crash_test" in console, console[-2000:]
        # The three other CPUs were NMIed into turning SVM off; all four report it off.
        assert "panic: virtualization off on 4/4 cpus (3 parked by NMI), resetting" in console, console[-2000:]
        assert rc == 0, rc
    finally:
        hv.stop()


def test_reboot_comes_back_ready():
    with Hermitage(smp=2, reboot=True) as hv:
        assert post(hv, "/v1/host/reboot", 202) == {"status": "rebooting"}
        hv.wait_for(r"hermitage: endpoint ready on ", 60, count=2)
        assert hv.get_json("/v1/health")["status"] == "ok"
        assert all(c["virt"] == "svm" for c in hv.get_json("/v1/cpus"))


def test_guest_runs_under_svm_with_npt():
    """A guest from the kernel command line runs on CPU 1: its UART output reaches the console
    (port I/O exits, instruction lengths without NRIPS) and its debug-exit write stops it."""
    with Hermitage(smp=2, append="vm=smoke vm=smoke") as hv:
        hv.wait_for(r"vm 2 \(smoke-2\) stopped: debug exit code 0", 30)
        console = hv.console()
        assert "vm 1 (smoke-1) started on cpu 1" in console, console[-2000:]
        assert "[vm 1 smoke-1] Hi" in console and "[vm 2 smoke-2] Hi" in console, console[-2000:]
        assert "vm 1 (smoke-1) stopped: debug exit code 0" in console, console[-2000:]
        assert hv.get_json("/v1/health")["status"] == "ok"


def test_spinning_guests_are_preempted_and_move_when_their_cpu_goes_offline():
    """Two guests that spin with interrupts off (`cli; jmp $`) never exit by themselves: the
    preemption tick must take their CPUs back, so the CPUs still serve their mailboxes, the
    endpoint stays up, and taking a CPU offline moves its guests to another online CPU."""
    with Hermitage(smp=3, append="vm=spin vm=spin vm=smoke") as hv:
        hv.wait_for(r"vm 3 \(smoke-3\) stopped: debug exit code 0", 30)  # shares CPU 1 with spin-1
        cpu = post(hv, "/v1/cpus/2/offline", 200)
        assert (cpu["online"], cpu["virt"]) == (False, "off"), cpu
        hv.wait_for(r"cpu 2 offline: 1 vms moved, 0 paused", 10)
        post(hv, "/v1/cpus/1/offline", 200)
        hv.wait_for(r"cpu 1 offline: 2 vms moved, 0 paused", 10)  # both spinners now on CPU 0
        assert hv.get_json("/v1/health")["status"] == "ok"
        assert post(hv, "/v1/cpus/2/online", 200)["selftest"] == "passed"
        assert post(hv, "/v1/cpus/1/online", 200)["selftest"] == "passed"
        assert all(c["virt"] == "svm" for c in hv.get_json("/v1/cpus"))


def test_multiboot_guests_from_guests_crate():
    """The hello and exerciser guests (multiboot ELF32, built in guests/) run under SVM."""
    with Hermitage(smp=2, append="vm=hello vm=exerciser") as hv:
        hv.wait_for(r"vm 2 \(exerciser-2\) stopped: debug exit code", 60)
        hv.wait_for(r"\[vm 2 exerciser-2\] DONE pass=", 10)
        console = hv.console()
        assert "[vm 1 hello-1] Hello from a Hermitage guest!" in console, console[-3000:]
        assert "vm 1 (hello-1) stopped: debug exit code 0" in console, console[-3000:]
        for check in ["cpuid-hypervisor-bit", "cpuid-svm-hidden", "cpuid-vmx-hidden", "msr-pat-roundtrip",
                      "msr-unknown-rdmsr-gp", "vmmcall-ud", "vmrun-ud", "port-unemulated-dword", "uart-lsr-idle"]:
            assert f"[vm 2 exerciser-2] PASS {check}" in console, (check, console[-3000:])


def test_tdx_on_without_tdx_is_not_fatal():
    """tdx=on on a machine without TDX (an AMD CPU, and a guest of QEMU): the image says why,
    carries on, and reports it under GET /v1/host."""
    with Hermitage(smp=2, append="tdx=on") as hv:
        console = hv.console()
        assert re.search(r"tdx: requested but unavailable: .+ \((not_intel|running_as_guest)\); continuing without TDX",
                         console), console[-3000:]
        host = hv.get_json("/v1/host")
        assert host["tdx"]["supported"] is False and host["tdx"]["reason"] in ("not_intel", "running_as_guest"), host
        assert hv.get_json("/v1/health")["status"] == "ok"


TESTS = [test_boot_1_cpu, test_boot_2_cpus, test_boot_4_cpus, test_errors_are_json,
         test_keep_alive_connection_serves_many, test_curl_like_a_person,
         test_clean_shutdown_exit_code, test_bad_command_line_is_refused,
         test_svm_on_and_self_tested_on_every_cpu, test_cpu_offline_online_reads_hardware_back,
         test_cpu_transitions_that_are_not_allowed, test_last_online_cpu_cannot_go_offline,
         test_reboot_turns_virtualization_off_everywhere_first,
         test_panic_path_shoots_down_every_cpu, test_reboot_comes_back_ready,
         test_guest_runs_under_svm_with_npt,
         test_spinning_guests_are_preempted_and_move_when_their_cpu_goes_offline,
         test_multiboot_guests_from_guests_crate, test_tdx_on_without_tdx_is_not_fatal]

if __name__ == "__main__":
    sys.exit(1 if run_suite("svm", TESTS, sys.argv[1:]) else 0)
