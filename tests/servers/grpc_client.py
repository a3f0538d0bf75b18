"""Drives grpc_server.py with a known mix over one channel and prints
what it got, as JSON: {"METHOD STATUS": count}, and the client's own
durations of /shop.Cart/Slow in seconds under "slow".

    grpc_client.py PORT ROUNDS

Each round: Get ×3 (OK), Get "missing" (NOT_FOUND), Slow (OK), List of
3 replies (OK), and Hang with a 100 ms deadline (DEADLINE_EXCEEDED).
"""
import json
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


with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    for _ in range(rounds):
        for _ in range(3):
            call(channel, "/shop.Cart/Get", b"cart-1")
        call(channel, "/shop.Cart/Get", b"missing")
        slow.append(call(channel, "/shop.Cart/Slow", b""))
        call(channel, "/shop.Cart/List", bytes([3]), stream=True)
        call(channel, "/shop.Cart/Hang", b"", timeout=0.1)
print(json.dumps({"counts": counts, "slow": slow}), flush=True)
