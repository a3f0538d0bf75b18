"""A monitored service that is a Redis client over TLS: Python's ssl
module (OpenSSL on a socket BIO) under redis-py, or with `asyncio` its
asyncio client (OpenSSL on memory BIOs, writing first).

    redis_tls_client.py PORT REDIS_PORT [asyncio]

Listens on 127.0.0.1:PORT (what makes the agent monitor it), prints
"ready", then obeys stdin, one command a line:
  go ROUNDS   ROUNDS rounds of SET, GET (hit), GET (miss), INCR and a
              pipeline of 10 SETs on one connection, then one GET on
              each of 5 new connections; answers with its counts per
              command as JSON
Exits when stdin closes. The server's certificate is the test's own and
not checked; no CLIENT SETINFO is sent.
"""
import asyncio
import json
import socket
import ssl  # noqa: F401  (loaded up front, so the agent probes it)
import sys

import redis
import redis.asyncio

port, redis_port = int(sys.argv[1]), int(sys.argv[2])
use_asyncio = sys.argv[3:] == ["asyncio"]
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen()


def client(module=redis):
    return module.Redis(
        host="127.0.0.1",
        port=redis_port,
        ssl=True,
        ssl_cert_reqs=None,
        lib_name=None,
        lib_version=None,
        single_connection_client=True,
    )


def go(rounds):
    counts = {}

    def count(command, n=1):
        counts[command] = counts.get(command, 0) + n

    keep = client()
    for i in range(rounds):
        keep.set(f"tls-key-{i}", "value")
        keep.get(f"tls-key-{i}")
        keep.get(f"tls-absent-{i}")
        keep.execute_command("INCR", "tls-counter")
        pipe = keep.pipeline(transaction=False)
        for j in range(10):
            pipe.set(f"tls-pipe-{i}-{j}", j)
        pipe.execute()
        count("SET", 11)
        count("GET", 2)
        count("INCR")
    keep.close()
    for i in range(5):
        fresh = client()
        fresh.get(f"tls-key-{i}")
        fresh.close()
        count("GET")
    return counts


async def go_async(rounds):
    """The same commands as go(), through redis.asyncio."""
    counts = {}

    def count(command, n=1):
        counts[command] = counts.get(command, 0) + n

    keep = client(redis.asyncio)
    for i in range(rounds):
        await keep.set(f"tls-key-{i}", "value")
        await keep.get(f"tls-key-{i}")
        await keep.get(f"tls-absent-{i}")
        await keep.execute_command("INCR", "tls-counter")
        pipe = keep.pipeline(transaction=False)
        for j in range(10):
            pipe.set(f"tls-pipe-{i}-{j}", j)
        await pipe.execute()
        count("SET", 11)
        count("GET", 2)
        count("INCR")
    await keep.aclose()
    for i in range(5):
        fresh = client(redis.asyncio)
        await fresh.get(f"tls-key-{i}")
        await fresh.aclose()
        count("GET")
    return counts


print("ready", flush=True)
for line in sys.stdin:
    words = line.split()
    if words[:1] == ["go"]:
        rounds = int(words[1])
        counts = asyncio.run(go_async(rounds)) if use_asyncio else go(rounds)
        print(json.dumps(counts), flush=True)
