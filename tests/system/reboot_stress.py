"""Reboot stress of the virtual PMU: churn PMU configurations across guest resets and check,
from inside the guest, that every boot sees exactly the reset state of the configuration in
force. Run through scripts/reboot-stress [--iterations N].

One VM runs the `pmu` probe guest (guests/), which on every boot folds everything it sees of
its PMU (CPUID leaves, RDPMC, every PMU MSR of both vendors, a pattern written and read back)
into one digest, prints it, and resets itself through 0xCF9, the keyboard controller or a
triple fault by turns. Each iteration picks a configuration (off, every Intel version, every AMD
kind, the other vendor's PMU...), applies it with PUT /v1/vms/{id}/pmu, sometimes resets the VM
through the API as well, and waits for the next boot. The expected digest of every
configuration is computed on the host from the same model (`hv/examples/pmu_digest.rs`). The
PUT's answer carries the VM's reset count, taken under the same lock as the change, so the
configuration in force for every boot is known exactly.

Exit status 0 only if every digest matched and nothing hung."""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import time

from harness import ROOT, Hermitage, slow

CONFIGS = (["none"]
           + [f"intel:{v}" for v in range(1, 6)]
           + ["intel:2:8:3:48", "intel:3:2:0:32", "intel:4:4:3:40", "intel:5:8:4:48", "intel:1:1"]
           + ["amd:legacy", "amd:core_ext", "amd:core_ext:6"]
           + [f"amd:perfmon_v2:{n}" for n in range(1, 7)])


def to_json(spec):
    """The compact form (vm_pmu=) as the API's JSON."""
    parts = spec.split(":")
    if parts[0] == "none":
        return {"vendor": "none"}
    if parts[0] == "intel":
        doc = {"vendor": "intel", "version": int(parts[1])}
        for key, value in zip(["gp_counters", "fixed_counters", "width"], parts[2:]):
            doc[key] = int(value)
        return doc
    doc = {"vendor": "amd", "kind": parts[1]}
    if len(parts) > 2:
        doc["gp_counters"] = int(parts[2])
    return doc


def expected_digests(vendor):
    out = subprocess.run(
        ["cargo", "run", "-q", "--locked", "-p", "hermitage-hv", "--example", "pmu_digest", "--", vendor]
        + CONFIGS, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    table = dict(line.split() for line in out.splitlines())
    assert set(table) == set(CONFIGS), out
    return table


class Console:
    """Reads a VM's console by offset and yields (boot, digest, trigger) per completed boot."""

    def __init__(self, hv, vm_id):
        self.hv, self.vm_id, self.offset, self.pending, self.dropped = hv, vm_id, 0, "", 0

    def boots(self):
        status, headers, data = self.hv.request("GET", f"/v1/vms/{self.vm_id}/console?offset={self.offset}")
        assert status == 200, (status, data)
        self.offset = int(headers["x-console-next-offset"])
        lost = int(headers.get("x-console-dropped", "0"))
        if lost:
            self.dropped += lost
            self.pending = ""  # a boot whose start was lost cannot be checked
        self.pending += data.decode(errors="replace")
        found = []
        while True:
            # A boot cut short (an API reset mid-boot, maybe mid-line) has no digest: never let
            # a match run across the next boot's header, wherever on a line it starts.
            m = re.search(r"pmu: boot (\d+)\n(?:(?!.*pmu: boot ).*\n)*?pmu: digest (0x[0-9a-f]{8})\n",
                          self.pending)
            if not m:
                break
            found.append((int(m.group(1)), m.group(2)))
            self.pending = self.pending[m.end():]
        return found


def bar(done, total, width=40):
    n = int(width * done / max(total, 1))
    return f"[{'#' * n}{'.' * (width - n)}] {done}/{total}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=int(os.environ.get("HERMITAGE_STRESS_SEED", "1")))
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds without a new boot = hang")
    args = ap.parse_args()
    args.timeout = slow(args.timeout)
    rng = random.Random(args.seed)
    tty = sys.stderr.isatty()

    with Hermitage(smp=2) as hv:
        vendor = hv.get_json("/v1/host")["vendor"]
        expected = expected_digests(vendor)
        status, _, body = hv.request("POST", "/v1/vms", body=json.dumps(
            {"name": "probe", "image": "pmu", "cmdline": "cycle=4000000000 path=1 quiet=1", "on_crash": "reset",
             "start": True}).encode(), headers={"Content-Type": "application/json"})
        assert status == 201, (status, body)
        vm_id = json.loads(body)["id"]
        console = Console(hv, vm_id)
        applied = [(-1, "none")]  # (reset count when PUT, config): config for boots > count
        checked, mismatches, by_config, api_resets = 0, [], {}, 0
        start = time.time()

        def config_for(boot):
            return [c for r, c in applied if r < boot][-1]

        def check(found):
            nonlocal checked
            for boot, digest in found:
                config = config_for(boot)
                checked += 1
                by_config[config] = by_config.get(config, 0) + 1
                if digest != expected[config]:
                    mismatches.append((boot, config, digest, expected[config]))

        for i in range(args.iterations):
            spec = rng.choice(CONFIGS)
            status, _, body = hv.request("PUT", f"/v1/vms/{vm_id}/pmu", body=json.dumps(to_json(spec)).encode(),
                                         headers={"Content-Type": "application/json"})
            assert status == 200, (spec, status, body)
            resets = sum(json.loads(body)["stats"]["resets"].values())
            applied.append((resets, spec))
            if rng.random() < 0.25:
                status, _, body = hv.request("POST", f"/v1/vms/{vm_id}/reset")
                assert status == 200, (status, body)
                api_resets += 1
            # Wait for a boot that runs with this configuration.
            deadline = time.time() + args.timeout
            while True:
                found = console.boots()
                check(found)
                if any(boot > resets for boot, _ in found):
                    break
                if time.time() > deadline:
                    print(f"\nhang: no boot after reset {resets} within {args.timeout} s (iteration {i})")
                    print(hv.console()[-3000:])
                    return 1
                time.sleep(0.02)
            if tty:
                print(f"\r{bar(i + 1, args.iterations)} mismatches={len(mismatches)}", end="", file=sys.stderr)
            elif (i + 1) % max(1, args.iterations // 10) == 0:
                print(f"  {bar(i + 1, args.iterations)} mismatches={len(mismatches)}", flush=True)
        elapsed = time.time() - start
        if tty:
            print(file=sys.stderr)
        stats = hv.get_json(f"/v1/vms/{vm_id}")["stats"]
        total_resets = sum(stats["resets"].values())

        print("\nresets by trigger:")
        for trigger, n in stats["resets"].items():
            print(f"  {trigger:<22}{n:>8}")
        print("boots checked by configuration:")
        for spec in CONFIGS:
            print(f"  {spec:<22}{by_config.get(spec, 0):>8}  digest {expected[spec]}")
        print(f"iterations {args.iterations}, boots checked {checked}, api resets {api_resets}, "
              f"resets {total_resets} in {elapsed:.1f} s ({total_resets / elapsed:.1f} resets/s), "
              f"console bytes lost {console.dropped}, mismatches {len(mismatches)}")
        for boot, config, got, want in mismatches[:10]:
            seen_as = [c for c, d in expected.items() if d == got]
            print(f"  MISMATCH boot {boot}: config {config}: digest {got} (that of {', '.join(seen_as) or 'none'}), "
                  f"expected {want}; configurations applied around it: "
                  f"{[(r, c) for r, c in applied if boot - 20 < r < boot + 5]}")
        if mismatches:
            return 1
        if checked < args.iterations:
            print(f"too few boots checked: {checked} < {args.iterations}")
            return 1
        return 0


if __name__ == "__main__":
    sys.exit(main())
