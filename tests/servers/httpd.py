"""The non-Rust HTTP server of apm's end-to-end tests: Python's http.server,
threaded, HTTP/1.1 keep-alive. Usage: python3 httpd.py PORT

Routes match apm-httpd: /ok 200, /missing 404, /error 500, /sleep/MS sleeps
MS milliseconds then 200, /users/ID 200, anything else 200. Every response
carries a Content-Length. It writes the head and the body with separate
syscalls, as http.server does.
"""
import http.server
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body are separate writes; without TCP_NODELAY, Nagle and the
    # client's delayed ACK would add 40 ms to every response.
    disable_nagle_algorithm = True

    def do_GET(self):
        path = self.path.split("?", 1)[0]
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


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
