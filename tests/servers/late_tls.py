"""An HTTPS server that loads OpenSSL late: it listens at once (and says
`listening`), imports ssl only after DELAY seconds, then serves GET /ok
(200) and anything else (404), one request per connection.
Usage: late_tls.py PORT CERT KEY DELAY"""
import socket
import sys
import time

port, cert, key, delay = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(64)
print("listening", flush=True)
time.sleep(delay)

import ssl  # noqa: E402  (late on purpose: the agent saw this process without libssl)

context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
while True:
    conn, _ = listener.accept()
    try:
        tls = context.wrap_socket(conn, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = tls.recv(4096)
            if not chunk:
                break
            head += chunk
        path = head.split(b" ")[1] if head.count(b" ") >= 2 else b"/"
        status, body = (b"200 OK", b"ok\n") if path == b"/ok" else (b"404 Not Found", b"no\n")
        tls.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 3\r\nConnection: close\r\n\r\n" + body)
        tls.close()
    except (ssl.SSLError, OSError):
        conn.close()
