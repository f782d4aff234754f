"""Bounded stress on the booted image: the endpoint must never stall.

Endpoint: per boot, 2,000 sequential requests, each on a new connection (half closed by the server with
`Connection: close`, half by the client), then 8 parallel clients x 250 requests. Repeated over
HERMITAGE_STRESS_BOOTS boots (default 10). Run: scripts/test stress"""
import json
import os
import sys
import threading

from harness import Hermitage, run_suite

BOOTS = int(os.environ.get("HERMITAGE_STRESS_BOOTS", "10"))
SEQUENTIAL = int(os.environ.get("HERMITAGE_STRESS_SEQUENTIAL", "2000"))
CLIENTS, PER_CLIENT = 8, int(os.environ.get("HERMITAGE_STRESS_PER_CLIENT", "250"))


def hammer(hv, count, errors, tag):
    paths = ["/v1/health", "/v1/cpus"]
    for i in range(count):
        headers = {"Connection": "close"} if i % 2 else {}
        try:
            status, _, body = hv.request("GET", paths[i % 2], headers=headers, timeout=15)
            doc = json.loads(body)
            if status != 200 or (i % 2 == 0 and doc.get("status") != "ok"):
                errors.append(f"{tag} #{i}: {status} {body[:100]!r}")
        except Exception as e:  # a stall shows up as a timeout here
            errors.append(f"{tag} #{i}: {e!r}")
            if len(errors) > 20:
                return


def test_endpoint_never_stalls():
    total = 0
    for boot in range(BOOTS):
        with Hermitage(smp=2) as hv:
            errors = []
            hammer(hv, SEQUENTIAL, errors, f"boot {boot} sequential")
            threads = [threading.Thread(target=hammer, args=(hv, PER_CLIENT, errors, f"boot {boot} client {c}"))
                       for c in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, f"{len(errors)} failures, first: {errors[:5]}\n{hv.console()[-2000:]}"
            assert hv.get_json("/v1/health")["status"] == "ok"
            total += SEQUENTIAL + CLIENTS * PER_CLIENT
            print(f"  boot {boot + 1}/{BOOTS}: {SEQUENTIAL + CLIENTS * PER_CLIENT} requests answered", flush=True)
    print(f"  {total} requests answered over {BOOTS} boots", flush=True)


CYCLES = int(os.environ.get("HERMITAGE_STRESS_CPU_CYCLES", "50"))


def test_cpu_offline_online_flapping():
    """Each non-boot CPU goes offline and online CYCLES times (in a random interleaving) while
    clients keep asking; every transition answers with the hardware state, the self-test passes
    after every online, and every CPU ends online with SVM on."""
    import random
    rng = random.Random(1234)
    with Hermitage(smp=4) as hv:
        errors, stop = [], threading.Event()

        def reader():
            while not stop.is_set():
                try:
                    status, _, _ = hv.request("GET", "/v1/cpus", timeout=15)
                    if status != 200:
                        errors.append(f"GET /v1/cpus: {status}")
                except Exception as e:
                    errors.append(repr(e))
                    return
        readers = [threading.Thread(target=reader) for _ in range(2)]
        for t in readers:
            t.start()
        online = {1: True, 2: True, 3: True}
        steps = [cpu for cpu in (1, 2, 3) for _ in range(2 * CYCLES)]
        rng.shuffle(steps)
        try:
            for cpu in steps:
                want = "offline" if online[cpu] else "online"
                status, _, body = hv.request("POST", f"/v1/cpus/{cpu}/{want}", timeout=15)
                doc = json.loads(body)
                assert status == 200, (cpu, want, status, doc)
                online[cpu] = not online[cpu]
                assert doc["online"] == online[cpu] and doc["virt"] == ("svm" if online[cpu] else "off"), doc
                if online[cpu]:
                    assert doc["selftest"] == "passed", doc  # re-run on every online
        finally:
            stop.set()
            for t in readers:
                t.join()
        assert not errors, errors[:5]
        assert all(online.values()), online  # an even number of steps per CPU
        for c in hv.get_json("/v1/cpus"):
            assert (c["online"], c["virt"], c["selftest"]) == (True, "svm", "passed"), c
        print(f"  {len(steps)} offline/online transitions under load ({CYCLES} cycles per cpu)", flush=True)


REBOOTS = int(os.environ.get("HERMITAGE_STRESS_REBOOTS", "20"))


def test_host_reboot_cycles():
    """POST /v1/host/reboot REBOOTS times; each time the image must boot again and serve."""
    with Hermitage(smp=4, reboot=True) as hv:
        for n in range(REBOOTS):
            status, _, body = hv.request("POST", "/v1/host/reboot")
            assert status == 202, (status, body)
            hv.wait_for(r"hermitage: endpoint ready on ", 90, count=n + 2)
            hv.wait_for(r"reboot: virtualization off on 4/4 cpus, resetting", 5, count=n + 1)
            cpus = hv.get_json("/v1/cpus")
            assert all(c["virt"] == "svm" and c["selftest"] == "passed" for c in cpus), cpus
        print(f"  {REBOOTS} host reboots, each back ready", flush=True)


TESTS = [test_endpoint_never_stalls, test_cpu_offline_online_flapping, test_host_reboot_cycles]

if __name__ == "__main__":
    sys.exit(1 if run_suite("stress", TESTS, sys.argv[1:]) else 0)
