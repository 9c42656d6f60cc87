#!/usr/bin/env python3
"""Writes audit chains computed here, with Python's hashlib and hmac, independently of
Passerelle's code: `audit verify` must find them intact, and name the record a test edits.

    python3 tests/data/audit/make-vectors.py    (rewrites the .jsonl files beside it)
    python3 tests/data/audit/make-vectors.py --verify FILE... [--key KEYFILE]
        checks a chain Passerelle wrote, with this file's own arithmetic: prints the number of
        records and exits 0 when every value follows, else names the first that does not.

The chain, as the README states it: each record's `chain` is SHA-256 (HMAC-SHA-256 with the
key) over the previous record's chain value, as its 64 hexadecimal characters, followed by the
record's JSON bytes without `chain`; the first value continued is 64 zeros.
"""
import hashlib
import hmac
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
GENESIS = "0" * 64
KEY = b"a test key that only the writer reads"

RECORDS = [
    {"seq": 1, "ts": "2026-12-01T08:00:00.000Z", "event": "start", "id": "", "client": None, "user": None,
     "method": None, "scheme": None, "host": None, "port": None, "path": None, "decision": None, "reason": None,
     "detail": "a new audit file: the chain starts here", "flow": None, "route": None, "status": None,
     "bytes_up": 0, "bytes_down": 0, "duration_ms": 0, "sni": None, "digest_after": "d" * 64,
     "chain_from": GENESIS},
    {"seq": 2, "ts": "2026-12-01T08:00:01.250Z", "event": "request", "id": "0badcafe-1", "client": "10.20.30.41:51000",
     "user": None, "method": "CONNECT", "scheme": "connect", "host": "covotem.esante-centre.fr", "port": 443,
     "path": None, "decision": "allow", "reason": None, "flow": "tlm-prod", "route": "direct", "status": 200,
     "bytes_up": 1820, "bytes_down": 53211, "duration_ms": 8123, "sni": "covotem.esante-centre.fr"},
    {"seq": 3, "ts": "2026-12-01T08:00:02.500Z", "event": "request", "id": "0badcafe-2", "client": "10.20.30.42:51001",
     "user": None, "method": "GET", "scheme": "http", "host": "evil.example", "port": 80, "path": "/é\u2028x",
     "decision": "deny", "reason": "no_flow", "detail": "GET http://evil.example/ refused: no allowed flow matches",
     "flow": None, "route": None, "status": 403, "bytes_up": 0, "bytes_down": 0, "duration_ms": 0, "sni": None},
    {"seq": 4, "ts": "2026-12-01T08:00:03.750Z", "event": "reload", "id": "", "client": "signal:SIGHUP", "user": None,
     "method": None, "scheme": None, "host": None, "port": None, "path": None, "decision": "allow", "reason": None,
     "flow": None, "route": None, "status": None, "bytes_up": 0, "bytes_down": 0, "duration_ms": 0, "sni": None,
     "digest_before": "d" * 64, "digest_after": "e" * 64},
]


def record_bytes(record):
    # Compact separators and UTF-8 as written; U+2028 escaped as Passerelle writes it.
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").encode()


def chain(key=None):
    previous, lines = GENESIS, []
    for record in RECORDS:
        body = record_bytes(record)
        data = previous.encode() + body
        value = hmac.new(key, data, hashlib.sha256).hexdigest() if key else hashlib.sha256(data).hexdigest()
        lines.append(body[:-1] + b',"chain":"' + value.encode() + b'"}')
        previous = value
    return b"\n".join(lines) + b"\n"


def verify(paths, key=None):
    previous, count = None, 0
    for path in paths:
        for number, line in enumerate(Path(path).read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            at = line.rindex(b',"chain":"')
            body, value = line[:at] + b"}", line[at + 10:-2].decode()
            record = json.loads(body)
            if record.get("event") in ("start", "rotate"):
                start = record.get("chain_from") or GENESIS
                if previous is not None and start != previous:
                    print(f"{path}:{number}: seq {record.get('seq')}: continues {start}, not {previous}")
                    return 1
                previous = start
            elif previous is None:
                previous = GENESIS
            data = previous.encode() + body
            expected = hmac.new(key, data, hashlib.sha256).hexdigest() if key else hashlib.sha256(data).hexdigest()
            if expected != value:
                print(f"{path}:{number}: seq {record.get('seq')}: the chain does not follow")
                return 1
            previous, count = value, count + 1
    print(f"{count} records follow")
    return 0


if __name__ == "__main__":
    import sys
    args = sys.argv[1:]
    if args[:1] == ["--verify"]:
        key = None
        if "--key" in args:
            at = args.index("--key")
            key = Path(args[at + 1]).read_bytes()
            del args[at:at + 2]
        sys.exit(verify(args[1:], key))
    (HERE / "chain-sha256.jsonl").write_bytes(chain())
    (HERE / "chain-hmac.jsonl").write_bytes(chain(KEY))
    (HERE / "chain.key").write_bytes(KEY)
