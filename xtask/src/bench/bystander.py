"""A process the agent does not monitor, doing TLS (Python's ssl on
OpenSSL), for `cargo xtask bench --case tls-bystander`.

    bystander.py CERT KEY

Two TLS pairs in this one process: one over a socketpair (each SSL call
one syscall: socket BIOs, as most clients and servers use) and one over
memory BIOs (no syscall at all). Turns of 20 ms alternate between them;
every second a line "SOCKET_NS MEMORY_NS" gives the time per SSL call of
each. The memory pair is the control: nothing the agent does reaches it,
so the ratio of the two cancels whatever speed the machine has that
second. Runs until stdin closes.
"""
import select
import socket
import ssl
import sys
import threading
import time

cert, key = sys.argv[1], sys.argv[2]
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(cert, key)
client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_ctx.check_hostname = False
client_ctx.verify_mode = ssl.CERT_NONE

# Over a socketpair: the handshake needs both ends at once.
a, b = socket.socketpair()
sockets = {}
accept = threading.Thread(
    target=lambda: sockets.update(server=server_ctx.wrap_socket(a, server_side=True))
)
accept.start()
client = client_ctx.wrap_socket(b)
accept.join()
server = sockets["server"]

# Over memory BIOs: bytes moved by hand.
c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
c_obj = client_ctx.wrap_bio(c_in, c_out)
s_obj = server_ctx.wrap_bio(s_in, s_out, server_side=True)
for _ in range(20):
    for obj in (c_obj, s_obj):
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
    s_in.write(c_out.read())
    c_in.write(s_out.read())

payload = b"x" * 64


def socket_round():
    client.send(payload)
    server.recv(64)
    server.send(payload)
    client.recv(64)


def memory_round():
    c_obj.write(payload)
    s_in.write(c_out.read())
    s_obj.read(64)
    s_obj.write(payload)
    c_in.write(s_out.read())
    c_obj.read(64)


def turn(round_fn, seconds):
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            round_fn()
        calls += 80
    return time.perf_counter() - start, calls


while not select.select([sys.stdin], [], [], 0)[0]:
    totals = {socket_round: [0.0, 0], memory_round: [0.0, 0]}
    second = time.perf_counter()
    while time.perf_counter() - second < 1.0:
        for fn in (socket_round, memory_round):
            spent, calls = turn(fn, 0.02)
            totals[fn][0] += spent
            totals[fn][1] += calls
    s, m = (totals[f][0] * 1e9 / totals[f][1] for f in (socket_round, memory_round))
    print(f"{s:.1f} {m:.1f}", flush=True)
