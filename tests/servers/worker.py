"""A monitored service whose resource use the tests script.

Usage: python3 worker.py PORT NAME [WORKERS]

Sets its process name to NAME, listens on 127.0.0.1:PORT, forks WORKERS
children that share the listening socket (a pre-fork server), prints
"listening PID..." with every pid, then obeys stdin, one command a line:
  burn SECONDS         every process burns one CPU for SECONDS
  alloc MIB            the master allocates and touches MIB more MiB
  hold MIB I           process I (0 = master) allocates and keeps MIB MiB
Each command is answered with "ok" once started (burn) or done (alloc).
"""
import ctypes
import os
import socket
import sys
import time

PR_SET_NAME = 15
held = []


def set_name(name):
    libc = ctypes.CDLL(None)
    libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def burn(seconds):
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


def alloc(mib):
    block = bytearray(mib * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    held.append(block)


def main():
    port, name = int(sys.argv[1]), sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    set_name(name)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    pipes = []
    pids = [os.getpid()]
    for _ in range(workers):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            child(os.fdopen(r))
            os._exit(0)
        os.close(r)
        pipes.append(os.fdopen(w, "w"))
        pids.append(pid)
    print("listening", *pids, flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "burn":
            for p in pipes:
                p.write(line)
                p.flush()
            print("ok", flush=True)
            burn(float(words[1]))
        elif words[0] == "alloc":
            alloc(int(words[1]))
            print("ok", flush=True)
        elif words[0] == "hold":
            index = int(words[2])
            if index == 0:
                alloc(int(words[1]))
            else:
                pipes[index - 1].write(line)
                pipes[index - 1].flush()
                time.sleep(1)
            print("ok", flush=True)
    for p in pipes:
        p.close()


def child(commands):
    for line in commands:
        words = line.split()
        if words[0] == "burn":
            burn(float(words[1]))
        elif words[0] == "hold":
            alloc(int(words[1]))


if __name__ == "__main__":
    main()
