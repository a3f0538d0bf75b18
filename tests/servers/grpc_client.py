"""Drives grpc_server.py with a known mix over one channel and prints
what it got, as JSON: {"METHOD STATUS": count}, and the client's own
durations of /shop.Cart/Slow in seconds under "slow".

    grpc_client.py PORT ROUNDS [--hold] [--tls CA] [--listen LPORT]

With --tls, over TLS (ALPN h2), trusting the PEM certificate CA.

With --listen, the client first listens on 127.0.0.1:LPORT (which makes
it a service to the agent), prints "ready" and waits for a line on stdin
before it connects: its calls are a monitored service's outbound calls.

With --hold, the client runs ROUNDS rounds, prints "ready", waits for a
line on stdin with its channel (one HTTP/2 connection) open, then runs
ROUNDS more and a call to a method it never called (UNIMPLEMENTED), and
prints what it got after the wait only.

Each round: Get ×3 (OK), Get "missing" (NOT_FOUND), Slow (OK), List of
3 replies of 8 KiB (OK), and Hang with a 100 ms deadline
(DEADLINE_EXCEEDED).
"""
import json
import socket
import sys
import time

import grpc

port, rounds = sys.argv[1], int(sys.argv[2])
counts = {}
slow = []


def call(channel, method, request, timeout=5.0, stream=False):
    make = channel.unary_stream if stream else channel.unary_unary
    stub = make(method)
    start = time.perf_counter()
    try:
        reply = stub(request, timeout=timeout)
        if stream:
            reply = list(reply)
        code = "OK"
    except grpc.RpcError as e:
        code = e.code().name
    key = f"{method} {code}"
    counts[key] = counts.get(key, 0) + 1
    return time.perf_counter() - start


hold = "--hold" in sys.argv[3:]


def mix(channel):
    for _ in range(rounds):
        for _ in range(3):
            call(channel, "/shop.Cart/Get", b"cart-1")
        call(channel, "/shop.Cart/Get", b"missing")
        slow.append(call(channel, "/shop.Cart/Slow", b""))
        call(channel, "/shop.Cart/List", bytes([3, 8]), stream=True)
        call(channel, "/shop.Cart/Hang", b"", timeout=0.1)


if "--listen" in sys.argv:
    lport = int(sys.argv[sys.argv.index("--listen") + 1])
    listener = socket.create_server(("127.0.0.1", lport))
    print("ready", flush=True)
    sys.stdin.readline()

if "--tls" in sys.argv:
    with open(sys.argv[sys.argv.index("--tls") + 1], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    opened = grpc.secure_channel(f"127.0.0.1:{port}", creds)
else:
    opened = grpc.insecure_channel(f"127.0.0.1:{port}")

with opened as channel:
    mix(channel)
    if hold:
        counts.clear()
        slow.clear()
        print("ready", flush=True)
        sys.stdin.readline()
        mix(channel)
        call(channel, "/shop.Cart/Late", b"")
print(json.dumps({"counts": counts, "slow": slow}), flush=True)
