#!/usr/bin/env python3
"""End-to-end check of the built guest modules with the `wasmtime` runtime.

Implements the SPACE host call sequence independently of the Rust SDK (so a
bug shared by the SDK and its own tests cannot hide), then asserts each
module's output, including multi-piece streams, configure/last_error/finish,
zero imports, a small initial memory, and no growth past a 16-page (1 MiB)
memory cap over long streams.

Usage:  python3 -m pip install wasmtime
        scripts/build-guests.sh
        python3 examples/guests/check.py [dist-dir]
"""

import csv
import gzip as gzipmod
import io
import json
import os
import random
import sys
import time

import wasmtime

PAGE = 65536
CAP_PAGES = 16
DIST = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist")
ENGINE = wasmtime.Engine()

V0 = {"memory", "alloc", "dealloc", "process"}
V1 = V0 | {"configure", "last_error", "finish"}
EXPECTED_EXPORTS = {
    "identity": V0,
    "uppercase": V0,
    "v0_reverse_case": V0,
    "append_bang": V1,
    "redact_pii": V1,
    "grep": V1,
    "csv2jsonl": V1,
    "gunzip": V1,
}

_modules = {}


def module(name):
    if name not in _modules:
        _modules[name] = wasmtime.Module.from_file(ENGINE, os.path.join(DIST, name + ".wasm"))
    return _modules[name]


class Rejected(Exception):
    """configure returned non-zero; carries the last_error message."""


def encode_args(args):
    return b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in sorted(args.items()))


def split_ptr_len(r):
    r &= (1 << 64) - 1
    return r >> 32, r & 0xFFFFFFFF


class Stream:
    """One instance serving one stream, driven exactly as the host does."""

    def __init__(self, name, args=None, cap_pages=CAP_PAGES):
        self.store = wasmtime.Store(ENGINE)
        if cap_pages:
            self.store.set_limits(memory_size=cap_pages * PAGE)
        inst = wasmtime.Instance(self.store, module(name), [])
        self.ex = inst.exports(self.store)
        self.mem = self.ex["memory"]
        self.names = {e.name for e in module(name).exports}
        if "configure" in self.names:
            block = encode_args(args or {})
            p = self.call("alloc", len(block))
            self.mem.write(self.store, block, p)
            rc = self.call("configure", p, len(block))
            self.call("dealloc", p, len(block))
            if rc != 0:
                msg = ""
                if "last_error" in self.names:
                    ptr, n = split_ptr_len(self.call("last_error"))
                    msg = bytes(self.mem.read(self.store, ptr, ptr + n)).decode()
                raise Rejected(msg)
        elif args:
            raise Rejected("module takes no arguments (no configure export)")

    def call(self, fn, *a):
        return self.ex[fn](self.store, *a)

    def process(self, piece):
        p = self.call("alloc", len(piece))
        self.mem.write(self.store, piece, p)
        optr, olen = split_ptr_len(self.call("process", p, len(piece)))
        out = bytes(self.mem.read(self.store, optr, optr + olen)) if olen else b""
        self.call("dealloc", p, len(piece))
        if olen > 0 and optr != p:
            self.call("dealloc", optr, olen)
        return out

    def finish(self):
        if "finish" not in self.names:
            return b""
        ptr, n = split_ptr_len(self.call("finish"))
        out = bytes(self.mem.read(self.store, ptr, ptr + n)) if n else b""
        if n:
            self.call("dealloc", ptr, n)
        return out

    def pages(self):
        return self.mem.size(self.store)


def run(name, data, piece_sizes=(None,), args=None, cap_pages=CAP_PAGES):
    """Runs `data` cut into pieces cycling through `piece_sizes` (None = whole)."""
    s = Stream(name, args, cap_pages)
    out = []
    pos, i = 0, 0
    while pos < len(data):
        size = piece_sizes[i % len(piece_sizes)] or len(data)
        out.append(s.process(data[pos : pos + size]))
        pos += size
        i += 1
    out.append(s.finish())
    return b"".join(out), s


def run_all_ways(name, data, args=None, expect=None, cap_pages=CAP_PAGES):
    """Asserts the output is independent of piece boundaries; returns it.

    The whole-input run is uncapped (a piece plus the module's working copy
    of it must fit in memory); every split run uses `cap_pages`."""
    whole, _ = run(name, data, (None,), args, cap_pages=None)
    for sizes in [(1,), (3, 1, 7), (4096,), (65536,), (1000, 17, 4096)]:
        if (sizes == (1,) and len(data) > 5000) or (sizes == (3, 1, 7) and len(data) > 50000):
            continue  # too many host calls to be worth the time
        got, _ = run(name, data, sizes, args, cap_pages)
        assert got == whole, f"{name}: pieces {sizes} changed the output"
    rng = random.Random(len(data))
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, max(2, len(data))), min(8, max(0, len(data) - 1))))
        bounds = [0] + cuts + [len(data)]
        s = Stream(name, args, cap_pages)
        got = b"".join(s.process(data[a:b]) for a, b in zip(bounds, bounds[1:])) + s.finish()
        assert got == whole, f"{name}: random cuts {cuts} changed the output"
    if expect is not None:
        assert whole == expect, f"{name}: got {whole[:200]!r}, want {expect[:200]!r}"
    return whole


def check(label, fn):
    t = time.time()
    fn()
    print(f"ok   {label} ({time.time() - t:.2f}s)")


# --- module-level properties ---------------------------------------------


def structure():
    for name, want in EXPECTED_EXPORTS.items():
        m = module(name)
        assert list(m.imports) == [], f"{name} has imports: {[(i.module, i.name) for i in m.imports]}"
        exports = {e.name for e in m.exports} - {"__data_end", "__heap_base"}
        assert exports == want, f"{name}: exports {sorted(exports)}, want {sorted(want)}"
        mem = next(e.type for e in m.exports if e.name == "memory")
        assert mem.limits.min <= 4, f"{name}: initial memory {mem.limits.min} pages"
        size = os.path.getsize(os.path.join(DIST, name + ".wasm"))
        print(f"     {name:16} {size:6} bytes, {mem.limits.min} initial pages, exports: {' '.join(sorted(exports))}")


def no_leaks():
    """4 MiB per module in 4 KiB pieces under the 16-page cap: a leak of a
    piece per call traps, and memory must not grow after the first MiB."""
    text = (b"name,mail\nann,ann@example.com\ncard 4111 1111 1111 1111 ERROR\n" * 20000)[: 1 << 20]
    for name in EXPECTED_EXPORTS:
        args = {"pattern": "ERROR"} if name == "grep" else None
        data = text
        if name == "gunzip":
            # Incompressible, so a 4 KiB piece inflates to ~4 KiB; a
            # compressible piece may inflate past the cap (see README).
            data = gzipmod.compress(random.Random(5).randbytes(4 << 20), mtime=0)
        s = Stream(name, args)
        warm = None
        for _ in range(4):
            for pos in range(0, len(data), 4096):
                s.process(data[pos : pos + 4096])
            warm = warm or s.pages()
            if name == "gunzip":
                break  # one stream; repeating it would append garbage
        s.finish()
        assert s.pages() == warm, f"{name}: memory grew from {warm} to {s.pages()} pages"


def big_pieces():
    """1 MiB pieces (the largest the host sends) need more than the cap."""
    data = random.Random(1).randbytes(1 << 20)
    out, _ = run("identity", data + data, (1 << 20,), cap_pages=None)
    assert out == data + data
    out, s = run("uppercase", data, (1 << 20,), cap_pages=64)
    assert out == data.upper()


# --- per-module behaviour ---------------------------------------------------


def identity():
    data = random.Random(2).randbytes(200_000)
    run_all_ways("identity", data, expect=data)
    run_all_ways("identity", b"", expect=b"")


def uppercase():
    data = ("Hello, wörld! abc xyz {`@[ " * 5000).encode()
    run_all_ways("uppercase", data, expect=data.upper())
    allbytes = bytes(range(256)) * 40
    run_all_ways("uppercase", allbytes, expect=allbytes.upper())
    big = b"the quick brown fox jumps over the lazy dog " * 24000
    t = time.time()
    for _ in range(4):
        out, _ = run("uppercase", big, (65536,), cap_pages=None)
    dt = time.time() - t
    assert out == big.upper()
    print(f"     uppercase: {4 * len(big) / dt / 1e6:.0f} MB/s incl. Python host copies")


def v0_reverse_case():
    data = b"Hello, World! 123 \xc3\xa9 aZ" * 1000
    run_all_ways("v0_reverse_case", data, expect=data.swapcase())
    try:
        Stream("v0_reverse_case", {"x": "1"})
        raise AssertionError("args accepted by a v0 module")
    except Rejected:
        pass


def append_bang():
    run_all_ways("append_bang", b"hello", expect=b"hello!")
    run_all_ways("append_bang", b"", expect=b"!")
    data = b"x" * 100_000
    run_all_ways("append_bang", data, expect=data + b"!")
    try:
        Stream("append_bang", {"loud": "1"})
        raise AssertionError("unknown argument accepted")
    except Rejected as e:
        assert "loud" in str(e), e


def redact_pii():
    text = (
        b"Contact john.doe@example.com or a+b@mx.x-y.co.uk.\n"
        b"Card: 4111 1111 1111 1111, amex 378282246310005, bad 4111111111111112.\n"
        b"Not a card: 12345678901234567890. Not mail: x@localhost\n"
    )
    want = (
        b"Contact ****.***@*******.*** or ***@**.***.**.**.\n"
        b"Card: **** **** **** 1111, amex ***********0005, bad 4111111111111112.\n"
        b"Not a card: 12345678901234567890. Not mail: x@localhost\n"
    )
    run_all_ways("redact_pii", text, expect=want)
    big = text * 3000
    out = run_all_ways("redact_pii", big, expect=want * 3000)
    assert len(out) == len(big)
    run_all_ways("redact_pii", text, {"mask": "#", "cards": "false"}, expect=want.replace(b"*", b"#").replace(
        b"#### #### #### 1111", b"4111 1111 1111 1111").replace(b"###########0005", b"378282246310005"))
    try:
        Stream("redact_pii", {"mask": "xx"})
        raise AssertionError("bad mask accepted")
    except Rejected as e:
        assert "mask" in str(e), e


def grep():
    lines = [f"{i} {'ERROR' if i % 7 == 0 else 'info'} {'x' * (i % 50)}" for i in range(5000)]
    data = ("\n".join(lines)).encode()  # last line unterminated
    want = "".join(l + "\n" for l in lines if "ERROR" in l)
    if "ERROR" in lines[-1]:
        want = want[:-1]
    run_all_ways("grep", data, {"pattern": "ERROR"}, expect=want.encode())
    inv = "\n".join(l for l in lines if "error" not in l.lower()).encode()
    run_all_ways("grep", data, {"pattern": "error", "ignore_case": "true", "invert": "true"}, expect=inv)
    for args, needle in [({}, "pattern"), ({"pattern": ""}, "empty"), ({"pattern": "a", "invert": "?"}, "invert")]:
        try:
            Stream("grep", args)
            raise AssertionError(f"grep accepted {args}")
        except Rejected as e:
            assert needle in str(e), e


def csv2jsonl():
    rng = random.Random(3)
    alphabet = ["a", "b", ",", '"', "\n", "\r\n", " ", "é", "😀", "\\", "\t", "\x01", ";"]
    header = ["id", "text", "quote \"q\"", "ü"]
    rows = [[str(i)] + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(12))) for _ in range(3)]
            for i in range(1500)]
    for delim in [",", ";"]:
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=delim)
        w.writerow(header)
        w.writerows(rows)
        data = buf.getvalue().encode()
        args = {} if delim == "," else {"delimiter": delim}
        out = run_all_ways("csv2jsonl", data, args)
        got = [json.loads(l) for l in out.decode().splitlines()]
        assert got == [dict(zip(header, r)) for r in rows], "csv2jsonl disagrees with Python's csv module"
        for obj in got:
            assert list(obj) == header
    run_all_ways("csv2jsonl", b"a,b\n1\n1,2,3", expect=b'{"a":"1","b":null}\n{"a":"1","b":"2","_3":"3"}\n')
    try:
        Stream("csv2jsonl", {"delimiter": "ab"})
        raise AssertionError("bad delimiter accepted")
    except Rejected as e:
        assert "delimiter" in str(e), e


def gunzip():
    rng = random.Random(4)
    data = bytes(rng.choice(b"abcdefgh \n") for _ in range(300_000)) + rng.randbytes(20_000)
    gz = gzipmod.compress(data, compresslevel=6, mtime=0)
    run_all_ways("gunzip", gz, expect=data)
    # Multi-member with a file name (FNAME) header, as `gzip` and `cat` make.
    buf = io.BytesIO()
    with gzipmod.GzipFile(filename="x.txt", mode="wb", fileobj=buf, mtime=0) as f:
        f.write(b"second member\n")
    run_all_ways("gunzip", gz + buf.getvalue(), expect=data + b"second member\n")
    run_all_ways("gunzip", b"", expect=b"")
    bad = bytearray(gz)
    bad[-8] ^= 1
    for payload in [bytes(bad), gz[:-3], b"plain text"]:
        try:
            run("gunzip", payload, (4096,))
            raise AssertionError("corrupt gzip accepted")
        except wasmtime.Trap:
            pass


def main():
    missing = [n for n in EXPECTED_EXPORTS if not os.path.exists(os.path.join(DIST, n + ".wasm"))]
    if missing:
        sys.exit(f"missing modules in {DIST}: {missing} (run scripts/build-guests.sh)")
    tests = [structure, no_leaks, big_pieces, identity, uppercase, v0_reverse_case, append_bang, redact_pii,
             grep, csv2jsonl, gunzip]
    failed = 0
    for t in tests:
        try:
            check(t.__name__, t)
        except Exception as e:  # report every failure, not just the first
            failed += 1
            print(f"FAIL {t.__name__}: {type(e).__name__}: {e}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
