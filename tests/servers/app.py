"""The FastAPI application of apm's production-traffic tests, run under
uvicorn with one worker: uvicorn --app-dir tests/servers app:app.

Routes (what a real API serves):
  GET  /users/{id}       sleeps SLEEP_MS (20 ms), then a small JSON
  GET  /reports/export   a CSV streamed with StreamingResponse: a header
                         and ROWS rows written by Python's csv module, one
                         chunk per row, ROW_SLEEP_MS between rows; every
                         row ends in a multiple of 10 and CRLF, so each
                         chunk's data ends in "0\\r\\n" and each chunk in
                         "0\\r\\n\\r\\n", like the end of a chunked body
  POST /orders           reads a JSON body (tens of KiB), answers 201
  POST /captures         a body of raw HTTP requests (what a recording tool
                         uploads), answers 202 with how many it holds
  GET  /download         DOWNLOAD_BYTES bytes with a Content-Length
  GET  /fail             500
  GET  /health           a tiny JSON
and FastAPI's own 404 for anything else. Each request's duration as the
server saw it is printed ("apm-timing ..."), see Timed.
"""
import asyncio
import csv
import io
import time

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

SLEEP_MS = 20
ROWS = 20
ROW_SLEEP_MS = 5
DOWNLOAD_BYTES = 3 * 1024 * 1024

api = FastAPI()
_download = bytes(range(256)) * (DOWNLOAD_BYTES // 256)


@api.get("/users/{user_id}")
async def user(user_id: int):
    await asyncio.sleep(SLEEP_MS / 1000)
    return {"id": user_id, "name": f"user-{user_id}"}


def _csv_line(row):
    out = io.StringIO()
    csv.writer(out).writerow(row)  # lineterminator "\r\n"
    return out.getvalue()


@api.get("/reports/export")
async def export():
    async def rows():
        yield _csv_line(["id", "item", "amount"])
        for i in range(1, ROWS + 1):
            await asyncio.sleep(ROW_SLEEP_MS / 1000)
            yield _csv_line([i, f"item-{i}", i * 10])

    return StreamingResponse(rows(), media_type="text/csv")


@api.post("/orders", status_code=201)
async def orders(request: Request):
    body = await request.json()
    return {"accepted": len(body.get("items", []))}


@api.post("/captures", status_code=202)
async def captures(request: Request):
    # Raw HTTP requests a recording tool uploads: counted, not parsed.
    body = await request.body()
    return {"requests": body.count(b" HTTP/1.1\r\n")}


@api.get("/download")
async def download():
    return Response(content=_download, media_type="application/octet-stream")


@api.get("/fail")
async def fail():
    return JSONResponse({"error": "failed on purpose"}, status_code=500)


@api.get("/health")
async def health():
    return {"status": "ok"}


class Timed:
    """The server's own timing of every request, printed to stdout (the
    log the test reads): from the ASGI call (the head parsed) to the send
    of the response's last body part (taken just before it, so this
    interval lies within the one the agent measures on the wire), in
    milliseconds: "apm-timing METHOD PATH STATUS MS"."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        start = time.monotonic()
        status = 0

        async def timed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            last = message["type"] == "http.response.body" and not message.get("more_body")
            ms = (time.monotonic() - start) * 1000
            await send(message)
            if last:
                print(f"apm-timing {scope['method']} {scope['path']} {status} {ms:.3f}", flush=True)

        await self.inner(scope, receive, timed_send)


app = Timed(api)
