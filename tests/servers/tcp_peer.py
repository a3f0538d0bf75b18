"""The two ends of the TCP-health test, each keeping its own counts.

`tcp_peer.py serve PORT`: a threaded server. On each connection it reads
lines `SIZE UP`, takes UP bytes of upload and answers SIZE bytes; the line
`RST` makes it close abortively (SO_LINGER 0: the kernel sends a reset).

`tcp_peer.py client LPORT`: listens on LPORT (so it is a monitored
service), prints `listening`, then runs one stdin command at a time:
  refuse PORT N       N connects to a closed PORT; prints `refused K`
  reset PORT N        N connections the server resets; prints `reset K`
  abort PORT N        N connections it resets itself; prints `aborted K`
  load PORT C R SIZE UP  C connections held open, R exchanges each;
                      prints `loaded`
  close               closes the held connections; prints `closed`
"""

import socket
import struct
import sys
import threading

LINGER_ZERO = struct.pack("ii", 1, 0)


def read_exact(conn, n):
    got = 0
    while got < n:
        chunk = conn.recv(min(n - got, 1 << 16))
        if not chunk:
            raise ConnectionError("closed early")
        got += len(chunk)


def read_line(conn):
    line = b""
    while not line.endswith(b"\n"):
        b = conn.recv(1)
        if not b:
            return None
        line += b
    return line.decode().strip()


def handle(conn):
    try:
        while True:
            line = read_line(conn)
            if line is None:
                break
            if line == "RST":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
                break
            size, up = (int(x) for x in line.split())
            read_exact(conn, up)
            conn.sendall(b"x" * size)
    except OSError:
        pass
    finally:
        conn.close()


def serve(port):
    srv = socket.create_server(("127.0.0.1", port), backlog=128)
    print("listening", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=20)


def exchange(conn, size, up):
    conn.sendall(f"{size} {up}\n".encode() + b"u" * up)
    read_exact(conn, size)


def client(lport):
    listener = socket.create_server(("127.0.0.1", lport))
    print("listening", flush=True)
    held = []
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, args = words[0], [int(w) for w in words[1:]]
        if cmd == "refuse":
            port, n = args
            refused = 0
            for _ in range(n):
                try:
                    connect(port).close()
                except ConnectionRefusedError:
                    refused += 1
            print(f"refused {refused}", flush=True)
        elif cmd == "reset":
            port, n = args
            reset = 0
            for _ in range(n):
                conn = connect(port)
                conn.sendall(b"RST\n")
                try:
                    while conn.recv(1024):
                        pass
                except ConnectionResetError:
                    reset += 1
                conn.close()
            print(f"reset {reset}", flush=True)
        elif cmd == "abort":
            port, n = args
            for _ in range(n):
                conn = connect(port)
                exchange(conn, 1, 0)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
                conn.close()
            print(f"aborted {n}", flush=True)
        elif cmd == "load":
            port, conns, rounds, size, up = args
            held = [connect(port) for _ in range(conns)]

            def run(conn):
                for _ in range(rounds):
                    exchange(conn, size, up)

            threads = [threading.Thread(target=run, args=(c,)) for c in held]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print("loaded", flush=True)
        elif cmd == "close":
            for conn in held:
                conn.close()
            held = []
            print("closed", flush=True)
    listener.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        client(int(sys.argv[2]))
