"""An ASGI app for hypercorn, which answers `Upgrade: h2c` with
`101 Switching Protocols` and the upgraded request over HTTP/2 (nginx
does not implement the upgrade).

    hypercorn --bind 127.0.0.1:PORT h2c_app:app

GET /items/{id}   200, a small JSON
GET /big          200, 64 KiB (frames across many segments)
anything else     404
"""

BIG = b"x" * (64 << 10)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path.startswith("/items/"):
        status, body = 200, b'{"id": "%s"}' % path[7:].encode()
    elif path == "/big":
        status, body = 200, BIG
    else:
        status, body = 404, b"not found"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})
