#!/usr/bin/env python3
"""An HTTP proxy that demands NTLM and verifies each NTLMv2 answer with pyspnego's acceptor,
an implementation independent of Passerelle's. A test peer: it listens on 127.0.0.1 only.

Forwarded (absolute-form) requests to a host:port given with --map are forwarded to that
address, as a real parent would (the map is its DNS); other forwarded requests are answered by
the parent itself, as if it were the origin: a JSON report of what reached it (method, target,
user, connection, body length). CONNECT targets are tunnelled to the addresses given with
--map. Unmapped CONNECT targets get 403, as from a parent's ACL.

It behaves like Squid 5.7 where that matters to a client: a 407 to a request whose body is
over 64 KiB is sent without reading the body, and the connection is then never read again
(the client must not send a body before the leg that can succeed); a request with
`Expect: 100-continue` gets `100 Continue` only once the connection is authenticated, else a
407 without its body being read (and the connection closes).

Every event is appended to --log as a JSON line, so tests assert on what the parent saw:
  {"event": "request", "conn": 3, "method": "GET", "target": "...", "auth": "NTLM"|"Basic"|null,
   "body_len": 18 (null when the body was not read), "expect": false}
  {"event": "handshake", "conn": 3, "user": "CHU\\svc"}
  {"event": "auth_failed", "conn": 3, "error": "..."}

Credentials come from NTLM_USER_FILE (lines DOMAIN:user:password); LM_COMPAT_LEVEL=5 makes
the acceptor refuse LM and NTLMv1.

With --negotiate KEYTAB (and --krb5-config), it demands Negotiate instead and accepts Kerberos
with MIT's GSS acceptor (through python-gssapi) and the service key in KEYTAB;
its first answer after the handshake carries the acceptor's final token (the AP-REP: mutual
authentication), or none (--final-token omit), or one the acceptor did not make (garble).
"""

import argparse
import asyncio
import base64
import http.client
import itertools
import json
import os
import sys
import urllib.parse

try:
    import spnego  # NTLM
except ImportError:  # --negotiate needs python-gssapi only
    spnego = None

COUNTER = itertools.count(1)


def log(path, **event):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


async def read_head(reader):
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = data.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return method, target, headers


async def read_body(reader, headers):
    """Reads the request body, also when the answer will be 407: the connection must stay in
    step for the next leg."""
    if "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    length = int(headers.get("content-length", ["0"])[0])
    return await reader.readexactly(length) if length else b""


SQUID_407_BODY_LIMIT = 64 * 1024


def declared_length(headers):
    if "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        return None
    return int(headers.get("content-length", ["0"])[0])


def fetch(destination, method, path, headers, body):
    """Forwards a request to the origin (in a thread: http.client is blocking)."""
    host, port = destination.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.reason, resp.getheaders(), data


def respond(writer, status, reason, headers=(), body=b""):
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


def scheme(args):
    return "Negotiate" if args.negotiate else "NTLM"


class Accepted:
    """A GSS acceptor with pyspnego's context interface (step, complete, client_principal)."""

    def __init__(self, context):
        self.context = context

    def step(self, token):
        return self.context.step(token)

    @property
    def complete(self):
        return self.context.complete

    @property
    def client_principal(self):
        return str(self.context.initiator_name)


def garbled(token):
    """The acceptor's final token with its last bytes (inside the AP-REP's encrypted part)
    flipped: well formed, but not what the acceptor made."""
    return token[:-8] + bytes(b ^ 0xFF for b in token[-8:])


def challenge_headers(args, token=None):
    if token is not None:
        return [("Proxy-Authenticate", scheme(args) + " " + base64.b64encode(token).decode())]
    offered = [("Proxy-Authenticate", scheme(args))]
    if args.offer_basic:
        offered.append(("Proxy-Authenticate", 'Basic realm="passerelle-test"'))
    return offered


async def refuse(args, writer, headers, challenge, text):
    """A 407 as Squid sends it: when the request announced `Expect: 100-continue`, or a body
    over 64 KiB, the body is not read; the connection is then closed (Expect) or never read
    again (large body). Returns whether the connection can carry another request."""
    expect = "100-continue" in ",".join(headers.get("expect", [])).lower()
    length = declared_length(headers)
    if expect:
        respond(writer, 407, "Proxy Authentication Required", challenge + [("Connection", "close")], text)
        await writer.drain()
        return False
    if length is None or length > SQUID_407_BODY_LIMIT:
        respond(writer, 407, "Proxy Authentication Required", challenge, text)
        await writer.drain()
        await asyncio.sleep(120)
        return False
    respond(writer, 407, "Proxy Authentication Required", challenge, text)
    await writer.drain()
    return None


async def handle(args, reader, writer):
    conn = next(COUNTER)
    context = None
    user = None
    served = 0
    final = []
    try:
        while True:
            head = await read_head(reader)
            if head is None:
                return
            method, target, headers = head
            if user is not None and args.rechallenge_after and served >= args.rechallenge_after:
                log(args.log, event="rechallenge", conn=conn)
                user, context, served = None, None, 0
            auth = headers.get("proxy-authorization", [None])[0]
            expect = "100-continue" in ",".join(headers.get("expect", [])).lower()
            body = None
            challenge = None
            if user is None:
                prefix = scheme(args).lower() + " "
                if not auth or not auth.lower().startswith(prefix):
                    challenge, text = challenge_headers(args), b"authentication required"
                else:
                    token = base64.b64decode(auth[len(prefix):])
                    if args.negotiate:
                        import gssapi
                        context = Accepted(gssapi.SecurityContext(usage="accept"))
                    elif context is None or token[8:12] == b"\x01\x00\x00\x00":
                        context = spnego.server(protocol="ntlm")
                    try:
                        out = context.step(token)
                    except Exception as error:  # pyspnego refuses the answer: wrong secret, v1...
                        log(args.log, event="auth_failed", conn=conn, error=str(error))
                        context = None
                        challenge, text = challenge_headers(args), b"bad credentials"
                    else:
                        if not context.complete:
                            challenge, text = challenge_headers(args, out), b"continue"
                            if args.close_after_challenge:
                                body = await read_body(reader, headers)
                                respond(writer, 407, "Proxy Authentication Required",
                                        challenge + [("Connection", "close")], text)
                                await writer.drain()
                                return
                        else:
                            user = context.client_principal
                            log(args.log, event="handshake", conn=conn, user=user,
                                final_token=bool(out))
                            token = {"send": out, "omit": None,
                                     "garble": garbled(out) if out else None}[args.final_token]
                            if args.negotiate and token:
                                final = [("Proxy-Authenticate",
                                          "Negotiate " + base64.b64encode(token).decode())]
            if challenge is not None:
                kept = await refuse(args, writer, headers, challenge, text)
                if kept is False:
                    log(args.log, event="request", conn=conn, method=method, target=target,
                        auth=auth.split(" ", 1)[0] if auth else None, body_len=None, expect=expect)
                    return
                body = await read_body(reader, headers)
                log(args.log, event="request", conn=conn, method=method, target=target,
                    auth=auth.split(" ", 1)[0] if auth else None, body_len=len(body), expect=expect)
                continue
            if expect:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            served += 1
            body = await read_body(reader, headers)
            log(args.log, event="request", conn=conn, method=method, target=target,
                auth=auth.split(" ", 1)[0] if auth else None, body_len=len(body), expect=expect)
            if method == "CONNECT":
                destination = args.map.get(target.lower())
                if destination is None:
                    respond(writer, 403, "Forbidden", [("X-Parent", "acl")], b"denied by the parent's ACL")
                    await writer.drain()
                    continue
                host, port = destination.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
                return
            url = urllib.parse.urlsplit(target)
            authority = f"{url.hostname}:{url.port or 80}".lower()
            destination = args.map.get(authority)
            if destination is not None:
                forwarded = {k: v[0] for k, v in headers.items()
                             if k not in ("proxy-authorization", "proxy-connection", "connection",
                                          "keep-alive", "transfer-encoding", "content-length", "expect")}
                path = url.path or "/"
                if url.query:
                    path += "?" + url.query
                status, reason, out_headers, data = await asyncio.to_thread(
                    fetch, destination, method, path, forwarded, body)
                kept = [(k, v) for k, v in out_headers
                        if k.lower() not in ("content-length", "transfer-encoding", "connection", "keep-alive")]
                respond(writer, status, reason, kept, data)
                await writer.drain()
                continue
            extra, final = final, []
            report = json.dumps({
                "via_parent": True, "method": method, "target": target, "user": user,
                "conn": conn, "body_len": len(body),
                "body": body.decode("utf-8", "replace")[:200],
                "headers": {k: v for k, v in headers.items() if k != "proxy-authorization"},
            }).encode()
            respond(writer, 200, "OK", [("Content-Type", "application/json")] + extra, report)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--map", action="append", default=[], help="host:port=127.0.0.1:port")
    parser.add_argument("--offer-basic", action="store_true", help="also offer Basic (never accepted)")
    parser.add_argument("--negotiate", metavar="KEYTAB",
                        help="demand Negotiate (Kerberos), the service key in KEYTAB")
    parser.add_argument("--krb5-config", help="the KDC's krb5.conf, with --negotiate")
    parser.add_argument("--final-token", choices=["send", "omit", "garble"], default="send",
                        help="with --negotiate: the final token in the first answer")
    parser.add_argument("--rechallenge-after", type=int, default=0,
                        help="forget an authenticated connection's user after N requests on it "
                             "(as a parent whose credentials cache expired does): the next gets a 407")
    parser.add_argument("--close-after-challenge", action="store_true",
                        help="fault: close the connection right after the NTLM challenge")
    args = parser.parse_args()
    args.map = dict(m.lower().split("=", 1) for m in args.map)
    if args.negotiate:
        os.environ["KRB5_KTNAME"] = args.negotiate
        if args.krb5_config:
            os.environ["KRB5_CONFIG"] = args.krb5_config
    if os.environ.get("LM_COMPAT_LEVEL") != "5" or not os.environ.get("NTLM_USER_FILE"):
        sys.exit("set NTLM_USER_FILE and LM_COMPAT_LEVEL=5")
    server = await asyncio.start_server(lambda r, w: handle(args, r, w), "127.0.0.1", args.port)
    log(args.log, event="listening", port=args.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
