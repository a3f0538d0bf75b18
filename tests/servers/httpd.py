"""The non-Rust HTTP server of apm's end-to-end tests: Python's http.server,
threaded, HTTP/1.1 keep-alive. Usage: python3 httpd.py PORT [ADDRESS]
(ADDRESS 127.0.0.1 by default; ::1 for IPv6).

Routes match apm-httpd: /ok 200, /missing 404, /error 500, /sleep/MS sleeps
MS milliseconds then 200, /users/ID 200, anything else 200. Those carry a
Content-Length, and it writes the head and the body with separate
syscalls, as http.server does. Two more exercise framing: /chunked sends
a chunked body with one sendmsg (writev) of two buffers, the head with the
first chunk and then the terminating 0 chunk on its own; /empty sends
"Content-Length: 0" and nothing else.
"""
import http.server
import socket
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body are separate writes; without TCP_NODELAY, Nagle and the
    # client's delayed ACK would add 40 ms to every response.
    disable_nagle_algorithm = True

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/chunked":
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            self.connection.sendmsg([head, b"0\r\n\r\n"])
            return
        if path == "/empty":
            self.connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        code, body = 200, b"any\n"
        if path == "/ok":
            body = b"ok\n"
        elif path == "/missing":
            code, body = 404, b"missing\n"
        elif path == "/error":
            code, body = 500, b"error\n"
        elif path.startswith("/sleep/"):
            time.sleep(min(int(path[len("/sleep/"):]), 10_000) / 1000)
            body = b"slept\n"
        elif path.startswith("/users/"):
            body = b"user\n"
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


def main():
    address = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    kind = V6Server if ":" in address else http.server.ThreadingHTTPServer
    server = kind((address, int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
