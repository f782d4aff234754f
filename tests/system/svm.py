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
            assert c["online"] is True and c["virt"] in ("off", "svm"), c
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


TESTS = [test_boot_1_cpu, test_boot_2_cpus, test_boot_4_cpus, test_errors_are_json,
         test_keep_alive_connection_serves_many, test_curl_like_a_person,
         test_clean_shutdown_exit_code, test_bad_command_line_is_refused]

if __name__ == "__main__":
    sys.exit(1 if run_suite("svm", TESTS, sys.argv[1:]) else 0)
