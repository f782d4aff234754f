"""Hostile clients against the control endpoint, over raw sockets: truncated and oversized
requests, bad UTF-8, wrong methods, slow clients, bad JSON, huge numbers, odd paths, bad tokens,
too many connections. Every answer must be a well-formed HTTP/1.1 response with the one JSON
error shape (or a clean close where that is right), and /v1/health must answer afterwards.

Run against booted images (two boots: one plain, one with a token and tight limits):

    python3 tests/system/hostile.py [name-filter...]

or against endpoints already listening (for example `cargo run -p hermitage-net --example
serve`, the same endpoint over std TCP with a fake hypervisor):

    HERMITAGE_PLAIN=127.0.0.1:8080 HERMITAGE_AUTH=127.0.0.1:8081 python3 tests/system/hostile.py

where the second was started with the words in AUTH_APPEND below.
"""
import json
import os
import random
import re
import socket
import sys
import time

from harness import Hermitage, run_suite

TOKEN = "h0stile-T0ken_~+/="
MAX_CONNS = 4
IDLE_MS = 1500
AUTH_APPEND = f"api_token={TOKEN} http_max_conns={MAX_CONNS} http_idle_ms={IDLE_MS} " \
              "http_max_headers=16 http_max_head_bytes=2048 http_max_body_bytes=1024 " \
              "http_max_upload_bytes=65536"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Requests checked so far (the suite asserts at least 200 in all).
CHECKED = [0]


class Endpoint:
    """Where to send: a booted image (a `Hermitage`) or an address from the environment."""

    def __init__(self, env, append, **boot):
        self.hv = None
        addr = os.environ.get(env) if env else None
        if addr:
            host, port = addr.rsplit(":", 1)
            self.host, self.port = host, int(port)
        else:
            self.hv = Hermitage(**{"smp": 2, "append": append, **boot})
            self.host, self.port = "127.0.0.1", self.hv.port

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.hv:
            self.hv.stop()
        return False

    def connect(self, timeout=10):
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def context(self):
        return self.hv.console()[-3000:] if self.hv else ""


# --- reading responses -------------------------------------------------------------------------

STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [\x20-\x7e]*\r\n")


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name):
        return self.headers.get(name.lower())

    def json(self):
        return json.loads(self.body)

    def code(self):
        return self.json()["error"]["code"]

    def __repr__(self):
        return f"<{self.status} {self.headers} {self.body[:300]!r}>"


def parse_one(buf):
    """One complete response from the front of `buf`: (Response, rest) or None if incomplete.
    Raises AssertionError on anything malformed."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        assert len(buf) < 16384, f"response head too long or malformed: {buf[:200]!r}"
        return None
    head = buf[:end + 2]
    m = STATUS_LINE.match(head)
    assert m, f"bad status line: {head[:120]!r}"
    status = int(m.group(1))
    headers = {}
    for line in head[m.end():].split(b"\r\n")[:-1]:
        assert re.fullmatch(rb"[A-Za-z0-9-]+: [\x20-\x7e]*", line), f"bad header line {line!r}"
        name, value = line.decode().split(": ", 1)
        assert name.lower() not in headers, f"duplicate header {name}"
        headers[name.lower()] = value
    assert headers.get("connection") in ("keep-alive", "close"), headers
    if status == 204:
        assert "content-length" not in headers and "content-type" not in headers, headers
        length = 0
    else:
        assert re.fullmatch(r"\d+", headers.get("content-length", "")), headers
        length = int(headers["content-length"])
    start = end + 4
    if len(buf) < start + length:
        return None
    body = buf[start:start + length]
    r = Response(status, headers, body)
    check_shape(r)
    return r, buf[start + length:]


def check_shape(r):
    assert 200 <= r.status <= 599, r
    if r.status >= 400:
        assert r.header("content-type") == "application/json", r
        doc = json.loads(r.body)
        assert isinstance(doc, dict) and list(doc) == ["error"], r
        err = doc["error"]
        assert set(err) in ({"code", "message"}, {"code", "message", "reason"}), r
        assert re.fullmatch(r"[a-z_]+", err["code"]), r
        assert isinstance(err["message"], str) and err["message"], r
    elif r.header("content-type") == "application/json":
        json.loads(r.body)
    assert (r.header("allow") is not None) == (r.status == 405), r
    assert (r.header("www-authenticate") is not None) == (r.status == 401), r
    if r.status == 401:
        assert r.header("www-authenticate") == "Bearer", r


def exchange(ep, payload, count=1, shut=False, timeout=8.0, chunks=None, delay=0.0, until_close=False):
    """Send `payload` (or `chunks` with `delay` between them) on a new connection; read until
    `count` responses arrived and, if the last says close, until the server closes. Returns
    (responses, closed): closed is True when the server closed (FIN or reset) and False when
    the connection was still open at the end."""
    s = ep.connect(timeout)
    responses, buf, closed = [], b"", False
    try:
        try:
            if chunks is None:
                s.sendall(payload)
            else:
                for c in chunks:
                    s.sendall(c)
                    if delay:
                        time.sleep(delay)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed early; read what it sent
        deadline = time.time() + timeout
        while time.time() < deadline:
            while True:
                one = parse_one(buf)
                if one is None:
                    break
                r, buf = one
                responses.append(r)
            want_close = responses and responses[-1].header("connection") == "close"
            if len(responses) >= count and not want_close and not until_close:
                break
            s.settimeout(max(0.05, deadline - time.time()))
            try:
                data = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            buf += data
        assert buf == b"", f"trailing bytes after the responses: {buf[:200]!r}"
    finally:
        s.close()
    for r in responses[:-1]:
        assert r.header("connection") == "keep-alive", f"close before the last response: {responses}"
    if responses and responses[-1].header("connection") == "close":
        assert closed, f"said Connection: close but did not close: {responses[-1]}"
    CHECKED[0] += 1
    return responses, closed


def expect(ep, payload, status, code=None, closes=None, count=1, **kw):
    """The last of `count` responses has `status` (an int or a tuple of ints) and `code`; and
    the connection closes (or stays open) as `closes` says, if given."""
    rs, closed = exchange(ep, payload, count=count, **kw)
    assert len(rs) == count, f"{payload[:120]!r}: expected {count} responses, got {rs} (closed={closed})"
    r = rs[-1]
    want = status if isinstance(status, tuple) else (status,)
    assert r.status in want, f"{payload[:160]!r}: expected {status}, got {r}"
    if code is not None:
        codes = code if isinstance(code, tuple) else (code,)
        assert r.code() in codes, f"{payload[:160]!r}: expected {code}, got {r}"
    if closes is not None:
        assert closed == closes, f"{payload[:160]!r}: closed={closed}, expected {closes}; {r}"
    return r


def expect_clean_close_or_error(ep, payload, **kw):
    """Either no answer and a clean close, or well-formed error responses then a close."""
    rs, closed = exchange(ep, payload, count=1, shut=True, until_close=True, **kw)
    assert closed, f"{payload[:120]!r}: not closed: {rs}"
    for r in rs:
        assert r.status >= 400 or r.status == 200, r
    return rs


def req(method, path, body=b"", ctype=None, extra="", close=True, version="1.1"):
    head = f"{method} {path} HTTP/{version}\r\nHost: hv\r\n{extra}"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


def health_ok(ep, auth=""):
    r = expect(ep, req("GET", "/v1/health", extra=auth), 200)
    assert r.json()["status"] == "ok", r


# --- the cases ---------------------------------------------------------------------------------

def cases_truncated(ep):
    full = req("POST", "/v1/vms", b'{"name":"t","image":"hello"}', "application/json")
    for cut in sorted(set([1, 3, 4, 5, 10, 16, 20, 30, 40, 50, 60, len(full) - 30, len(full) - 1])):
        expect_clean_close_or_error(ep, full[:cut])
    # A head that never ends, then the client gives up.
    expect_clean_close_or_error(ep, b"GET /v1/health HTTP/1.1\r\nX-A: b\r\n")
    # Body shorter than Content-Length.
    expect_clean_close_or_error(ep, b"PUT /v1/vms/1/pmu HTTP/1.1\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: 50\r\n\r\n{\"vendor\":")
    # Nothing at all.
    expect_clean_close_or_error(ep, b"")
    expect_clean_close_or_error(ep, b"\r\n\r\n")


def cases_oversized(ep, head_limit=8192, body_limit=65536, upload_limit=16 << 20, auth=""):
    # A head over the limit: 431 and close, without waiting for more.
    expect(ep, b"GET /v1/health HTTP/1.1\r\nX-Big: " + b"a" * (head_limit + 10) + b"\r\n\r\n",
           431, "headers_too_large", closes=True)
    expect(ep, b"GET /" + b"p" * (head_limit + 10) + b" HTTP/1.1\r\n\r\n", 431, closes=True)
    many = "".join(f"X-H{i}: v\r\n" for i in range(100))
    expect(ep, f"GET /v1/health HTTP/1.1\r\n{many}\r\n".encode(), 431, "too_many_headers", closes=True)
    # Bodies announced over the limits: 413 at once (the body is never sent).
    for n in (body_limit + 1, 10 * body_limit, 2 ** 64, 10 ** 30):
        expect(ep, f"POST /v1/vms HTTP/1.1\r\n{auth}Content-Type: application/json\r\n"
                   f"Content-Length: {n}\r\n\r\n".encode(), 413, "body_too_large", closes=True)
    expect(ep, f"PUT /v1/vms/1/image HTTP/1.1\r\n{auth}Content-Type: application/octet-stream\r\n"
               f"Content-Length: {upload_limit + 1}\r\n\r\n".encode(), 413, "body_too_large", closes=True)
    # The JSON limit does not apply to uploads (the backend then judges the bytes).
    n = body_limit + 1
    if n <= upload_limit:
        r = expect(ep, f"PUT /v1/vms/999/image HTTP/1.1\r\n{auth}Content-Type: application/octet-stream\r\n"
                       f"Content-Length: {n}\r\nConnection: close\r\n\r\n".encode() + b"\0" * n,
                   (404, 400, 409))
        assert r.code() in ("vm_not_found", "bad_image", "invalid_state"), r


def cases_framing(ep, auth=""):
    expect(ep, b"GET /v1/health HTTP/2.0\r\n\r\n", 505, closes=True)
    expect(ep, b"GET /v1/health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, closes=True)
    expect(ep, b"POST /v1/vms HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, closes=True)
    for cl in (b"abc", b"-1", b"1 2", b"+5", b"0x10", b""):
        expect(ep, b"POST /v1/vms HTTP/1.1\r\nContent-Length: " + cl + b"\r\n\r\n", 400, "bad_header", closes=True)
    expect(ep, b"POST /v1/vms HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, closes=True)
    for junk in (b"GET\r\n\r\n", b"GET /v1/health\r\n\r\n", b" GET / HTTP/1.1\r\n\r\n",
                 b"GET /v1/health HTTP/1.1\r\nNo-Colon\r\n\r\n", b"GET /v1/health HTTP/1.1\r\n: v\r\n\r\n",
                 b"GET /v1/health HTTP/1.1\r\nX\x00Y: v\r\n\r\n", b"GET /v1/health HTTP/1.1\r\nA B: c\r\n\r\n",
                 b"GET /v1/health HTTP/1.1\rX: y\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                 b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        rs = expect_clean_close_or_error(ep, junk)
        assert all(r.status in (400, 404, 431, 501, 505) for r in rs), (junk, rs)
    # Targets that are not paths.
    for target in (b"*", b"http://hv/v1/health", b"v1/health", b"%2Fv1/health"):
        expect(ep, b"GET " + target + b" HTTP/1.1\r\n\r\n", 400, closes=True)


def cases_bad_utf8(ep, auth=""):
    for path in (b"/v1/\xff", b"/v1/vms/\xc3\x28", b"/v1/\xed\xa0\x80", b"/\xf0\x28\x8c\x28"):
        rs = expect_clean_close_or_error(ep, b"GET " + path + b" HTTP/1.1\r\n" + auth.encode() + b"\r\n")
        assert rs and rs[0].status in (400, 404), rs
    for bad in (b"\xff\xfe", b"Bearer \xc3\x28"):
        rs = expect_clean_close_or_error(ep, b"GET /v1/health HTTP/1.1\r\nAuthorization: " + bad + b"\r\n\r\n")
        assert rs and rs[0].status in (400, 401), rs
    expect(ep, b"POST /v1/vms HTTP/1.1\r\nContent-Type: \xff\r\nContent-Length: 2\r\n\r\n{}", 400, "bad_header")
    for body in (b'{"name":"\xff","image":"hello"}', b'{"name":"a","image":"hello","cmdline":"\xc3\x28"}',
                 b'{"\xff":1}', b"\xef\xbb\xbf{}"):
        expect(ep, req("POST", "/v1/vms", body, "application/json", auth), 400, "invalid_body")


def documented_routes():
    """(METHOD, path) of every route in net/openapi.yaml, which `cargo test -p hermitage-net`
    holds against the router: the one list, not a copy. `{id}` becomes 0 for CPUs, 1 for VMs."""
    doc = os.path.join(os.path.dirname(__file__), "..", "..", "net", "openapi.yaml")
    routes, path = [], None
    with open(doc) as f:
        for line in f:
            m = re.match(r"^  (/v1\S*):\s*$", line)
            if m:
                path = m.group(1).replace("/cpus/{id}", "/cpus/0").replace("/vms/{id}", "/vms/1")
                continue
            m = re.match(r"^    (get|post|put|delete|patch|head|options):\s*$", line)
            if m and path:
                routes.append((m.group(1).upper(), path))
            elif re.match(r"^\S", line):
                path = None
    assert len(routes) >= 20, routes
    return routes


ROUTES = documented_routes()


def cases_methods(ep, auth=""):
    allowed = {}
    for m, p in ROUTES:
        allowed.setdefault(p, set()).add(m)
    for path, ms in allowed.items():
        for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            if m in ms:
                continue
            r = expect(ep, req(m, path, extra=auth), 405, "method_not_allowed", closes=True)
            assert set(r.header("allow").split(", ")) == ms, (path, r)
    # A method we do not know on a known path: 405 like any other; elsewhere 501.
    for m in ("BREW", "get", "Get", "TRACE", "CONNECT", "PROPFIND"):
        r = expect(ep, req(m, "/v1/health", extra=auth), 405, "method_not_allowed")
        assert r.header("allow") == "GET", r
        expect(ep, req(m, "/v1/nope", extra=auth), 501, "not_implemented")


def cases_paths(ep, auth=""):
    for p in ("/", "/v1", "/v1/", "//v1/health", "/v1/health/", "/v1//health", "/v1/../v1/health",
              "/v1/%68ealth", "/V1/health", "/v1/health;x", "/v2/health", "/v1/vms/1/", "/v1/vms/1/start/x",
              "/v1/cpus/1/online/", "/" + "a/" * 500, "/v1/vms/1/console/../stats", "/.%2e/.%2e/etc/passwd"):
        r = expect(ep, req("GET", p, extra=auth), 404, "not_found")
        assert len(r.body) < 2048, r
    for p in ("/v1/vms/abc", "/v1/vms/-1", "/v1/vms/+1", "/v1/vms/1.0", "/v1/vms/0x1", "/v1/vms/4294967296",
              "/v1/vms/99999999999999999999999999", "/v1/cpus/%31", "/v1/vms/1a"):
        expect(ep, req("GET", p, extra=auth), 400, "invalid_id")
    # A query is ignored where none is taken.
    expect(ep, req("GET", "/v1/health?x=1&y", extra=auth), 200)
    expect(ep, req("GET", "/v1/vms/4294967295", extra=auth), 404, "vm_not_found")


BAD_JSON = [
    b"", b"{", b"}", b"[]", b"null", b"1", b'"x"', b"{}{}", b"{} x", b'{"name":"a",}', b'{"name" "a"}',
    b"{'name':'a'}", b'{"name":"a","image":"hello"', b'{"name":"a","image":hello}', b"{\"name\":\"a\\q\"}",
    b'{"name":"a","image":"hello","start":"yes"}', b'{"name":"a","image":"hello","start":1}',
    b'{"name":"a","image":"hello","memory_mib":1e400}', b'{"name":"a","image":"hello","memory_mib":-0}',
    b'{"name":"a","image":"hello","memory_mib":99999999999999999999999999999}',
    b'{"name":"a","image":"hello","memory_mib":16.5}', b'{"name":"a","image":"hello","memory_mib":"16"}',
    b'{"name":"a","image":"hello","memory_mib":0}', b'{"name":"a","image":"hello","memory_mib":1025}',
    b'{"name":"a","image":"hello","cpu":-1}', b'{"name":"a","image":"hello","cpu":64}',
    b'{"name":"a","image":"hello","cpu":18446744073709551616}', b'{"name":"A","image":"hello"}',
    b'{"name":"","image":"hello"}', b'{"name":"' + b"a" * 33 + b'","image":"hello"}',
    b'{"name":"a b","image":"hello"}',
    b'{"name":"a","image":"hello","cmdline":"' + b"x" * 257 + b'"}',
    b'{"name":"a","image":"hello","cmdline":"a\\nb"}', b'{"name":"a","image":"hello","cmdline":"\\u0000"}',
    b'{"name":"a","image":"hello","on_crash":"explode"}', b'{"name":"a","image":"hello","on_crash":null}',
    b'{"name":"a","image":"hello","extra":1}', b'{"name":"a","name":"b","image":"hello"}',
    b'{"name":"a","image":"hello","pmu":null}', b'{"name":"a","image":"hello","pmu":{}}',
    b'{"name":"a","image":"hello","pmu":{"vendor":"arm"}}',
    b'{"name":"a","image":"hello","pmu":{"vendor":"intel","version":0}}',
    b'{"name":"a","image":"hello","pmu":{"vendor":"intel","version":6}}',
    b'{"name":"a","image":"hello","pmu":{"vendor":"intel","gp_counters":9}}',
    b'{"name":"a","image":"hello","pmu":{"vendor":"intel","version":1,"fixed_counters":1}}',
    b'{"name":"a","image":"hello","pmu":{"vendor":"intel","width":31}}',
    b'{"name":"a","image":"hello","pmu":{"vendor":"intel","width":256}}',
    b'{"name":"a","image":"hello","pmu":{"vendor":"intel","kind":"legacy"}}',
    b'{"name":"a","image":"hello","pmu":{"vendor":"amd","kind":"legacy","gp_counters":6}}',
    b'{"name":"a","image":"hello","pmu":{"vendor":"amd","kind":"zen9"}}',
    b'{"name":"a","image":"hello","pmu":{"vendor":"amd","version":2}}',
    b'{"name":"a","image":"hello","pmu":{"vendor":"none","gp_counters":1}}',
    b'{"image":"hello"}', b'{"name":"a"}', b"[" * 1000, b'{"a":' * 200,
]


def cases_bad_json(ep, auth=""):
    for body in BAD_JSON:
        r = expect(ep, req("POST", "/v1/vms", body, "application/json", auth), 400, "invalid_body")
        msg = r.json()["error"]["message"]
        assert msg == "body must be one JSON object" or ": " in msg, (body, msg)
    # Messages name the field.
    r = expect(ep, req("POST", "/v1/vms", b'{"name":"a","image":"hello","memory_mib":4096}', "application/json", auth),
               400, "invalid_body")
    assert r.json()["error"]["message"].startswith("memory_mib: "), r
    r = expect(ep, req("PUT", "/v1/vms/1/pmu", b'{"vendor":"intel","width":64}', "application/json", auth),
               (400, 404))
    if r.status == 400:
        assert r.json()["error"]["message"].startswith("width: "), r
    # Wrong or missing Content-Type: 415.
    for ct in (None, "text/plain", "application/jsonx", "multipart/form-data"):
        expect(ep, req("POST", "/v1/vms", b'{"name":"a","image":"hello"}', ct, auth), 415, "unsupported_media_type")
    expect(ep, req("PUT", "/v1/vms/1/image", b"\x7fELF", "application/json", auth), 415)


def cases_console(ep, auth=""):
    for q in ("offset=-1", "offset=x", "offset=", "offset=1&offset=2", "foo=bar", "offset=18446744073709551616",
              "offset=1e3", "offset=%31"):
        expect(ep, req("GET", f"/v1/vms/1/console?{q}", extra=auth), (400, 404), ("invalid_query", "vm_not_found"))
    r = expect(ep, req("GET", "/v1/vms/1/console?offset=18446744073709551615", extra=auth), (200, 404))
    if r.status == 200:
        assert r.header("x-console-next-offset") is not None and r.header("x-console-dropped") is not None, r


def cases_pipelined_and_slow(ep, auth=""):
    one = f"GET /v1/health HTTP/1.1\r\n{auth}\r\n".encode()
    rs, _ = exchange(ep, one * 20 + req("GET", "/v1/health", extra=auth), count=21)
    assert len(rs) == 21 and all(r.status == 200 for r in rs), rs
    # Byte by byte, slowly.
    payload = req("GET", "/v1/health", extra=auth)
    rs, closed = exchange(ep, None, chunks=[payload[i:i + 1] for i in range(len(payload))], delay=0.005)
    assert len(rs) == 1 and rs[0].status == 200 and closed, rs
    # A body trickled in pieces.
    body = b'{"name":"a","image":"hello","memory_mib":0}'
    payload = req("POST", "/v1/vms", body, "application/json", auth)
    rs, _ = exchange(ep, None, chunks=[payload[i:i + 7] for i in range(0, len(payload), 7)], delay=0.01)
    assert len(rs) == 1 and rs[0].status == 400 and rs[0].code() == "invalid_body", rs
    # An error in the middle of a pipeline: answers up to it, then the error, then close.
    rs, closed = exchange(ep, one + b"GET / HTTP/9.9\r\n\r\n" + one, count=2)
    assert [r.status for r in rs] == [200, 505] and closed, rs


def cases_garbage(ep):
    rng = random.Random(1234)
    for _ in range(20):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
        expect_clean_close_or_error(ep, junk)
    for _ in range(10):
        words = [b"GET", b"/v1/", b"vms", b" ", b"\r\n", b"HTTP/1.1", b":", b"Content-Length: 5", b"{", b"\x00", b"\xff"]
        junk = b"".join(rng.choice(words) for _ in range(rng.randrange(1, 40)))
        expect_clean_close_or_error(ep, junk)


def cases_vms(ep, auth=""):
    """Well-formed requests the VM routes must refuse politely."""
    expect(ep, req("GET", "/v1/vms/4000000000", extra=auth), 404, "vm_not_found")
    for a in ("start", "pause", "resume", "stop", "reset"):
        expect(ep, req("POST", f"/v1/vms/4000000000/{a}", extra=auth), 404, "vm_not_found")
    expect(ep, req("DELETE", "/v1/vms/4000000000", extra=auth), 404, "vm_not_found")
    expect(ep, req("PUT", "/v1/vms/4000000000/pmu", b'{"vendor":"none"}', "application/json", auth), 404)
    expect(ep, req("PUT", "/v1/vms/4000000000/image", b"\x7fELF", "application/octet-stream", auth), 404)
    # Whatever is not a built-in image is the same error, a valid name or not (issue 18).
    for image in (b"no-such-image", b"", b"../../etc", b"A"):
        expect(ep, req("POST", "/v1/vms", b'{"name":"nope","image":"' + image + b'"}', "application/json", auth),
               400, "unknown_image")
    expect(ep, req("POST", "/v1/vms", b'{"name":"big","image":"hello","memory_mib":1024}', "application/json", auth),
           (201, 507), None)
    r = expect(ep, req("GET", "/v1/vms", extra=auth), 200)
    big = [vm for vm in r.json() if vm["name"] == "big"]
    if big:
        expect(ep, req("DELETE", f"/v1/vms/{big[0]['id']}", extra=auth), 204)


def cases_auth(ep):
    for auth in ("", "Authorization: Bearer\r\n", "Authorization: Bearer \r\n", "Authorization: Basic aDpw\r\n",
                 f"Authorization: Bearer {TOKEN[:-1]}\r\n", f"Authorization: Bearer {TOKEN}x\r\n",
                 f"Authorization: Bearer {TOKEN.upper()}\r\n", f"Authorization: {TOKEN}\r\n",
                 f"Authorization: Bearer {TOKEN} {TOKEN}\r\n", "Authorization: Bearer " + "A" * 1000 + "\r\n",
                 f"Authorization: Bearer x{TOKEN[1:]}\r\n", "Authorization: Bearer%20" + TOKEN + "\r\n"):
        for m, p in (("GET", "/v1/health"), ("GET", "/v1/vms"), ("GET", "/v1/nope"), ("POST", "/v1/host/reboot"),
                     ("DELETE", "/v1/vms/1"), ("GET", "/v1/vms/abc")):
            expect(ep, req(m, p, extra=auth), 401, "unauthorized")
    # An upload without the token is refused from its head (the body is never buffered).
    expect(ep, b"PUT /v1/vms/1/image HTTP/1.1\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Length: 60000\r\n\r\n", 401, "unauthorized", closes=True)
    # Two Authorization headers: refused as a bad header.
    expect(ep, req("GET", "/v1/health", extra=AUTH + AUTH), 400, "bad_header")
    # The right token, in any case of the scheme.
    for scheme in ("Bearer", "bearer", "BEARER"):
        expect(ep, req("GET", "/v1/health", extra=f"Authorization: {scheme} {TOKEN}\r\n"), 200)


def cases_idle(ep):
    """A client that sends half a head and waits: 408 (or a clean close) after the idle timeout."""
    t0 = time.time()
    rs, closed = exchange(ep, b"GET /v1/health HTTP/1.1\r\n", timeout=IDLE_MS / 1000 + 8)
    took = time.time() - t0
    assert closed, rs
    assert all(r.status == 408 and r.code() == "request_timeout" for r in rs), rs
    assert took >= IDLE_MS / 1000 * 0.8, f"closed after {took:.1f}s, idle timeout is {IDLE_MS} ms"
    # A silent connection too.
    rs, closed = exchange(ep, b"", timeout=IDLE_MS / 1000 + 8)
    assert closed and all(r.status == 408 for r in rs), rs


def cases_too_many_connections(ep):
    """Connections that stay open (keep-alive, served once) until the transport refuses one
    with 503: that must happen after at most MAX_CONNS (fewer if the transport still counts
    connections that are closing), and go on while they are held."""
    held = []
    try:
        refused = False
        for _ in range(MAX_CONNS + 1):
            s = ep.connect()
            s.sendall(f"GET /v1/health HTTP/1.1\r\n{AUTH}\r\n".encode())  # keep-alive: stays open
            s.settimeout(5)
            data = s.recv(65536)
            CHECKED[0] += 1
            if data.startswith(b"HTTP/1.1 503 "):
                r, _ = parse_one(data) or (None, None)
                assert r is not None and r.code() == "too_many_connections", data
                assert r.header("retry-after") == "1", r
                s.close()
                refused = True
                break
            assert data.startswith(b"HTTP/1.1 200 "), data[:200]
            held.append(s)
        assert refused, f"{len(held)} connections open and none refused (http_max_conns={MAX_CONNS})"
        assert held, "the first connection was refused"
        for _ in range(3):
            rs, closed = exchange(ep, req("GET", "/v1/health", extra=AUTH, close=False))
            assert closed and len(rs) == 1, rs
            assert rs[0].status == 503 and rs[0].code() == "too_many_connections", rs
    finally:
        for s in held:
            s.close()
    # Once they are gone, connections are served again (the transport may take a moment).
    deadline = time.time() + 10
    while True:
        rs, _ = exchange(ep, req("GET", "/v1/health", extra=AUTH))
        if rs and rs[0].status == 200:
            break
        assert time.time() < deadline, rs
        time.sleep(0.2)


# --- issue 18: the API as a new user meets it ---------------------------------------------------

# The built-in images the spec's `image` enum lists (net/openapi.yaml), read from it.
def documented_images():
    doc = os.path.join(os.path.dirname(__file__), "..", "..", "net", "openapi.yaml")
    with open(doc) as f:
        text = f.read()
    m = re.search(r"    VmCreate:.*?        image:.*?          enum: \[([^\]]*)\]", text, re.S)
    assert m, "no image enum in VmCreate"
    return [w.strip() for w in m.group(1).split(",")]


def call(ep, method, path, body=None, auth=""):
    ctype = "application/json" if body is not None else None
    data = json.dumps(body).encode() if body is not None else b""
    rs, _ = exchange(ep, req(method, path, data, ctype, auth))
    assert len(rs) == 1, rs
    return rs[0]


def vm_names(ep, auth=""):
    return [v["name"] for v in call(ep, "GET", "/v1/vms", auth=auth).json()]


def case_create_start_leaves_nothing(ep):
    """Item 1 and 6: a create whose start cannot work is refused whole, as a state error."""
    r = call(ep, "POST", "/v1/vms", {"name": "up", "image": "uploaded", "start": True})
    assert (r.status, r.code()) == (409, "invalid_state"), r
    assert "up" not in vm_names(ep), vm_names(ep)
    r = call(ep, "POST", "/v1/vms", {"name": "up", "image": "uploaded"})
    assert r.status == 201, r
    vid = r.json()["id"]
    for action in ("start", "reset"):
        r = call(ep, "POST", f"/v1/vms/{vid}/{action}")
        assert (r.status, r.code()) == (409, "invalid_state"), r
        assert "no image yet" in r.json()["error"]["message"], r
    assert call(ep, "DELETE", f"/v1/vms/{vid}").status == 204


def case_every_documented_image_exists(ep):
    """Item 6: the spec's enum is what the server takes: every name creates, others do not."""
    images = documented_images()
    assert "uploaded" in images and "hello" in images, images
    for i, image in enumerate(images):
        r = call(ep, "POST", "/v1/vms", {"name": f"img{i}", "image": image, "memory_mib": 2})
        assert r.status == 201, (image, r)
        assert call(ep, "DELETE", f"/v1/vms/{r.json()['id']}").status == 204
    codes = {call(ep, "POST", "/v1/vms", {"name": "x", "image": bad}).code() for bad in ("", "nope")}
    assert codes == {"unknown_image"}, codes


def case_upload_refused_from_head(ep):
    """Items 2 and 9: an upload to a running VM is answered from its head (the body is never
    sent here) with the right verb, and the connection closed."""
    r = call(ep, "POST", "/v1/vms", {"name": "busy", "image": "spinner", "start": True})
    assert r.status == 201, r
    vid = r.json()["id"]
    for expect_hdr in ("", "Expect: 100-continue\r\n"):
        head = (f"PUT /v1/vms/{vid}/image HTTP/1.1\r\nHost: hv\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: 8000000\r\n{expect_hdr}\r\n").encode()
        t0 = time.time()
        rs, closed = exchange(ep, head, timeout=10)
        assert time.time() - t0 < 5, "the refusal waited for the body"
        assert len(rs) == 1 and closed, rs
        assert (rs[0].status, rs[0].code()) == (409, "invalid_state"), rs
        msg = rs[0].json()["error"]["message"]
        assert msg == "cannot upload an image to a VM that is running; stop it first", msg
    assert call(ep, "POST", f"/v1/vms/{vid}/stop").status == 200
    assert call(ep, "DELETE", f"/v1/vms/{vid}").status == 204


def case_upload_speed(ep):
    """Item 2: megabytes upload in about a second under TCG (it took 53 s for 4 MiB), and a
    Linux kernel plus initramfs (~8 + ~2 MiB) fits the default limit."""
    r = call(ep, "POST", "/v1/vms", {"name": "big-up", "image": "uploaded", "memory_mib": 64})
    assert r.status == 201, r
    vid = r.json()["id"]
    times = {}
    for size in (4 << 20, 10 << 20):
        body = b"\x7fELF" + bytes(size - 4)  # not Multiboot: 400 bad_image once all is read
        s = ep.connect(timeout=60)
        try:
            t0 = time.time()
            s.sendall(f"PUT /v1/vms/{vid}/image HTTP/1.1\r\nHost: hv\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode() + body)
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
            times[size] = time.time() - t0
        finally:
            s.close()
        r, _ = parse_one(data)
        assert (r.status, r.code()) == (400, "bad_image"), r
        CHECKED[0] += 1
    print(f"  upload: 4 MiB in {times[4 << 20]:.2f} s, 10 MiB in {times[10 << 20]:.2f} s", flush=True)
    assert times[4 << 20] < 8, times
    assert call(ep, "DELETE", f"/v1/vms/{vid}").status == 204


def case_keep_alive_pool(ep, clients=20):
    """Item 7: a modest keep-alive client pool is served, none told 503."""
    socks = []
    try:
        for _ in range(clients):
            s = ep.connect()
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: hv\r\n\r\n")
            socks.append(s)
        for s in socks:
            s.settimeout(10)
            data = s.recv(65536)
            CHECKED[0] += 1
            assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    finally:
        for s in socks:
            s.close()


def test_issue18_api_as_a_new_user():
    with Endpoint(None, "", reboot=True) as ep:
        hv = ep.hv
        try:
            case_create_start_leaves_nothing(ep)
            case_every_documented_image_exists(ep)
            case_upload_refused_from_head(ep)
            case_upload_speed(ep)
            case_keep_alive_pool(ep)
            # Item 3: uptime counts from this boot, not from power-on.
            time.sleep(3)
            before = call(ep, "GET", "/v1/host").json()["uptime_ms"]
            assert before >= 3000, before
            assert call(ep, "POST", "/v1/host/reboot").status == 202
            hv.wait_for(r"hermitage: endpoint ready on ", 120, count=2)
            after = call(ep, "GET", "/v1/host").json()["uptime_ms"]
            assert after < before, f"uptime {after} ms after reboot, {before} ms before"
            rs, _ = exchange(ep, req("GET", "/v1/metrics"))
            m = re.search(rb"^hermitage_uptime_seconds ([0-9.]+)$", rs[0].body, re.M)
            assert m and float(m.group(1)) * 1000 < before, rs[0].body[:300]
        except AssertionError as e:
            raise AssertionError(f"{e}\n{ep.context()}") from None


def test_issue18_token_never_on_the_console():
    """Item 5: the token is redacted on the console, whether on the command line or handed
    over in a file through fw_cfg (scripts/run --token-file, not visible in `ps`)."""
    secret = "t0ken-" + "".join(random.choice("abcdefghijklmnop") for _ in range(20))
    with open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"hermitage-token-{os.getpid()}"), "w") as f:
        f.write(secret + "\n")
        path = f.name
    try:
        for append, kw in ((f"api_token={secret}", {}), ("", {"run_args": ["--token-file", path]})):
            with Endpoint(None, append, smp=1, **kw) as ep:
                hv = ep.hv
                expect(ep, req("GET", "/v1/health"), 401, "unauthorized")
                expect(ep, req("GET", "/v1/health", extra=f"Authorization: Bearer {secret}\r\n"), 200)
                console = hv.console()
                assert "api_token=<redacted>" in console, console[-2000:]
                leaks = [l for l in console.splitlines() if secret in l]
                assert not leaks, f"token on the console ({kw}): {leaks}"
                if "run_args" in kw:
                    qemu = [p for p in os.popen("ps -eo args").read().splitlines() if str(hv.port) in p]
                    assert qemu and not any(secret in p for p in qemu), qemu
    finally:
        os.unlink(path)


def readme_vm_block():
    """The README's "### VMs" example block, as written."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    m = re.search(r"^### VMs\n.*?```sh\n(.*?)```", text, re.S | re.M)
    assert m, "no sh block under ### VMs"
    return m.group(1)


def test_readme_vm_examples_run_in_order():
    """Item 8: the README's VM examples, run as written and in order, all succeed: the block is
    one bash script, with `curl` wrapped to fail on any 4xx/5xx."""
    import subprocess
    import tempfile
    block = readme_vm_block()
    assert "pause" in block and "guest-elf" in block, block
    wrapper = (
        "set -e\n"
        "curl() { local code; code=$(command curl -sS -o /dev/null -w '%{http_code}' \"$@\");"
        " code=${code: -3}; echo \"$code curl $*\"; sleep 0.3; [ \"$code\" -lt 400 ]; }\n")
    with Endpoint(None, "", smp=2) as ep, tempfile.TemporaryDirectory() as tmp:
        os.symlink(os.path.join(ROOT, "scripts"), os.path.join(tmp, "scripts"))
        env = dict(os.environ, H=f"http://{ep.host}:{ep.port}")
        p = subprocess.run(["bash", "-c", wrapper + block], cwd=tmp, env=env, capture_output=True,
                           text=True, timeout=600)
        lines = [l for l in p.stdout.splitlines() if " curl " in l]
        CHECKED[0] += len(lines)
        assert p.returncode == 0, f"{p.stdout[-3000:]}{p.stderr[-2000:]}\n{ep.context()}"
        assert len(lines) >= 18, p.stdout


# --- third-party tools: an OpenAPI validator and schemathesis -----------------------------------

OPENAPI = os.path.join(ROOT, "net", "openapi.yaml")


def api_tool(name):
    """A tool of the venv `scripts/test hostile` installs (target/api-tools)."""
    bin_dir = os.environ.get("HERMITAGE_API_TOOLS") or os.path.join(ROOT, "target", "api-tools", "bin")
    path = os.path.join(bin_dir, name)
    assert os.path.exists(path), f"{path} missing: scripts/test hostile installs it (pip, target/api-tools)"
    return path


def test_openapi_document_is_valid_openapi_3_0():
    """Item 4: net/openapi.yaml validates against the OpenAPI 3.0 schema."""
    import subprocess
    code = ("import sys; from openapi_spec_validator import validate; "
            "from openapi_spec_validator.readers import read_from_filename; "
            "d, _ = read_from_filename(sys.argv[1]); assert d['openapi'] == '3.0.3', d['openapi']; "
            "validate(d); print('valid')")
    p = subprocess.run([api_tool("python"), "-c", code, OPENAPI], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "valid" in p.stdout, (p.stdout + p.stderr)[-3000:]


# Checks left out, and why (README, "Testing the API"): positive_data_acceptance wants every
# schema-valid request accepted, but two refusals depend on what the schema cannot say: an image
# upload whose bytes are no Multiboot ELF (400 bad_image) and a pinned CPU this host does not
# have (400 unsupported). POST /v1/host/reboot is left out: it would reboot the image under test.
# 507 (no memory for another VM) counts as expected: tests/system/schemathesis.toml.
SCHEMATHESIS_EXCLUDED_CHECKS = "positive_data_acceptance"
SCHEMATHESIS_EXAMPLES = int(os.environ.get("HERMITAGE_SCHEMATHESIS_EXAMPLES", "10"))


def test_schemathesis_against_the_booted_image():
    """Every phase (coverage, fuzzing, stateful: VMs created, started, paused, uploaded to,
    deleted through the document's links), bounded by HERMITAGE_SCHEMATHESIS_EXAMPLES."""
    import subprocess
    with Endpoint(None, "", smp=2) as ep:
        p = subprocess.run(
            [api_tool("st"), "--config-file", os.path.join(ROOT, "tests", "system", "schemathesis.toml"),
             "run", OPENAPI, "--url", f"http://{ep.host}:{ep.port}",
             "-n", str(SCHEMATHESIS_EXAMPLES), "--seed", "18", "--checks", "all",
             "--exclude-checks", SCHEMATHESIS_EXCLUDED_CHECKS, "--exclude-operation-id", "rebootHost",
             "--request-timeout", "20"],
            capture_output=True, text=True, timeout=900, cwd=os.path.join(ROOT, "target"))
        out = p.stdout + p.stderr
        assert "Stateful" in out, out[-3000:]
        assert p.returncode == 0, out[-6000:] + "\n" + ep.context()
        # The stateful phase really drove VMs through the links.
        assert re.search(r"API Links:\s+[1-9]\d* covered", out), out[-3000:]
        print("  " + "\n  ".join(l for l in out.splitlines() if re.search(r"Links:|Test cases:|passed|Selected", l)), flush=True)


# --- the suite ---------------------------------------------------------------------------------

def test_hostile_without_token():
    with Endpoint("HERMITAGE_PLAIN", "") as ep:
        try:
            start = CHECKED[0]
            cases_truncated(ep)
            cases_oversized(ep)
            cases_framing(ep)
            cases_bad_utf8(ep)
            cases_methods(ep)
            cases_paths(ep)
            cases_bad_json(ep)
            cases_console(ep)
            cases_pipelined_and_slow(ep)
            cases_garbage(ep)
            cases_vms(ep)
            health_ok(ep)
            assert CHECKED[0] - start >= 200, f"only {CHECKED[0] - start} requests checked"
        except AssertionError as e:
            raise AssertionError(f"{e}\n{ep.context()}") from None


def test_hostile_with_token_and_tight_limits():
    with Endpoint("HERMITAGE_AUTH", AUTH_APPEND) as ep:
        try:
            cases_auth(ep)
            cases_oversized(ep, head_limit=2048, body_limit=1024, upload_limit=65536, auth=AUTH)
            cases_framing(ep, auth=AUTH)
            cases_bad_json(ep, auth=AUTH)
            cases_paths(ep, auth=AUTH)
            cases_idle(ep)
            cases_too_many_connections(ep)
            health_ok(ep, AUTH)
            expect(ep, req("GET", "/v1/health"), 401, "unauthorized")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{ep.context()}") from None


TESTS = [test_hostile_without_token, test_hostile_with_token_and_tight_limits,
         test_issue18_api_as_a_new_user, test_issue18_token_never_on_the_console,
         test_readme_vm_examples_run_in_order,
         test_openapi_document_is_valid_openapi_3_0, test_schemathesis_against_the_booted_image]

if __name__ == "__main__":
    failed = run_suite("hostile", TESTS, sys.argv[1:])
    print(f"hostile: {CHECKED[0]} requests checked", flush=True)
    sys.exit(1 if failed else 0)
