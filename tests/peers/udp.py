#!/usr/bin/env python3
"""UDP peers for the routed-UDP tests, run inside network namespaces.

echo ADDR:PORT... LOG   answer each datagram with "from SRC:PORT tos TOS: PAYLOAD" and append
                        the same line to LOG (flushed), so a test sees what arrived and how.
send SRC DST:PORT PAYLOAD [--port N] [--wait S]
                        send one datagram from SRC (port N, default any); with --wait, print
                        the answer, or "no answer" after S seconds.
"""
import selectors
import socket
import sys


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def echo(listen, log_path):
    sel = selectors.DefaultSelector()
    for a in listen:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        s.bind(addr(a))
        sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    with open(log_path, "a", buffering=1) as log:
        while True:
            for key, _ in sel.select():
                s = key.fileobj
                data, anc, _, src = s.recvmsg(2048, socket.CMSG_SPACE(1))
                tos = 0
                for level, kind, value in anc:
                    if level == socket.IPPROTO_IP and kind == socket.IP_TOS:
                        tos = value[0]
                here = "%s:%d" % s.getsockname()
                line = "to %s from %s:%d tos %#x: %s" % (here, src[0], src[1], tos, data.decode(errors="replace"))
                log.write(line + "\n")
                s.sendto(line.encode(), src)


def send(src, dst, payload, port, wait):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, port))
    s.sendto(payload.encode(), addr(dst))
    if wait is None:
        return
    s.settimeout(wait)
    try:
        print(s.recv(2048).decode())
    except socket.timeout:
        print("no answer")


def main(argv):
    if argv[0] == "echo":
        echo(argv[1:-1], argv[-1])
    elif argv[0] == "send":
        args = argv[1:]
        port, wait = 0, None
        if "--port" in args:
            i = args.index("--port")
            port = int(args[i + 1])
            del args[i:i + 2]
        if "--wait" in args:
            i = args.index("--wait")
            wait = float(args[i + 1])
            del args[i:i + 2]
        send(args[0], args[1], args[2], port, wait)


if __name__ == "__main__":
    main(sys.argv[1:])
