"""Boot the Hermitage image in QEMU (or Bochs) and talk to its endpoint: the system tests' one harness.

Each test is a function taking no arguments; `run_suite` runs a list of them, prints one line per
test and a closing 'N passed, N failed' line, and returns the number failed. Only the standard
library is used, so the tests need nothing installed beyond QEMU and the image.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RUN = os.path.join(ROOT, "scripts", "run")
# HERMITAGE_SYSTEM_EMULATOR=bochs boots every image of a suite in Bochs (the VMX path) instead
# of QEMU (SVM): the same API tests then run against VMX. scripts/test vmx does this for guests.
BOCHS = os.environ.get("HERMITAGE_SYSTEM_EMULATOR", "qemu") == "bochs"
# Bochs runs guests several times slower than QEMU's software CPU: waits stretch by this much.
SLOW = 3 if BOCHS else 1


def slow(seconds):
    """A wait in seconds, stretched for the emulator in use."""
    return seconds * SLOW


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc):
    """Stop a process started with start_new_session (QEMU or Bochs and their helpers): SIGTERM
    to its group, SIGKILL if it has not gone within 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Hermitage:
    """One booted image. Use as a context manager; the console log is kept for failures."""

    def __init__(self, smp=2, memory=512, append="", ready=True, timeout=90, reboot=False, bochs=None,
                 run_args=()):
        bochs = BOCHS if bochs is None else bochs
        if bochs:
            # Bochs takes 30-60 s to boot the image on a loaded 2-core machine.
            timeout = max(timeout, 300)
        self.emulator = "Bochs" if bochs else "QEMU"
        self.port = free_port()
        self.smp = smp
        self.log_file = tempfile.NamedTemporaryFile(prefix="hermitage-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [RUN, "--no-build", "--accel", "tcg", "--port", str(self.port), "--smp", str(smp),
             "--memory", str(memory), "--append", append] + ([] if reboot else ["--no-reboot"])
            + (["--bochs"] if bochs else []) + list(run_args),
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
        if ready:
            self.wait_for(r"hermitage: endpoint ready on ", timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def console(self):
        with open(self.log_file.name, "r", errors="replace") as f:
            return f.read()

    def wait_for(self, pattern, timeout=60, count=1):
        """Wait until `pattern` has appeared `count` times on the console."""
        deadline = time.time() + timeout
        rx = re.compile(pattern)
        while time.time() < deadline:
            text = self.console()
            found = list(rx.finditer(text))
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.emulator} exited ({self.proc.returncode}) before /{pattern}/:\n{text[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"timeout waiting for /{pattern}/:\n{self.console()[-3000:]}")

    def wait_exit(self, timeout=60):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.emulator} still running after {timeout}s:\n{self.console()[-3000:]}")

    def stop(self):
        stop_group(self.proc)
        self.log_file.close()

    def request(self, method, path, body=None, headers=None, timeout=20, conn=None):
        """One request; a new connection unless `conn` is given. Returns (status, headers, body)."""
        own = conn is None
        if own:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError) as e:
            # The endpoint is gone: say whether the emulator is too, and what the console said
            # last, so a CI log shows the hypervisor's panic or the emulator's crash.
            state = (f"{self.emulator} exited ({self.proc.returncode})" if self.proc.poll() is not None
                     else f"{self.emulator} still running")
            raise AssertionError(f"{method} {path}: {e}; {state}; console tail:\n"
                                 f"{self.console()[-3000:]}") from e
        finally:
            if own:
                conn.close()

    def get_json(self, path, expect=200, **kw):
        status, headers, data = self.request("GET", path, **kw)
        assert status == expect, f"GET {path}: {status} {data!r}"
        assert headers.get("content-type", "").startswith("application/json"), headers
        return json.loads(data)

    def raw(self, payload, timeout=10, read_all=True):
        """Send raw bytes on a new connection, return everything the server sent until it closed."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(payload)
            chunks = []
            while read_all:
                try:
                    b = s.recv(65536)
                except socket.timeout:
                    break
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks)


def run_suite(name, tests, select=None):
    passed = failed = 0
    for t in tests:
        if select and not any(s in t.__name__ for s in select):
            continue
        start = time.time()
        try:
            t()
            passed += 1
            print(f"test {name}::{t.__name__} ... ok ({time.time() - start:.1f}s)", flush=True)
        except Exception:
            failed += 1
            print(f"test {name}::{t.__name__} ... FAILED ({time.time() - start:.1f}s)", flush=True)
            traceback.print_exc(file=sys.stdout)
    print(f"{name}: {passed} passed, {failed} failed", flush=True)
    return failed
