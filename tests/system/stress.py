"""Bounded stress on the booted image: the endpoint must never stall.

Per boot: 2,000 sequential requests, each on a new connection (half closed by the server with
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


TESTS = [test_endpoint_never_stalls]

if __name__ == "__main__":
    sys.exit(1 if run_suite("stress", TESTS, sys.argv[1:]) else 0)
