"""An OTLP/HTTP trace receiver for the distributed-trace tests: python
otlp_receiver.py PORT [--mode ok|hang|fail] (PORT 0: any free one); it
prints "listening PORT" once ready and exits on SIGTERM.

  POST /v1/traces  an ExportTraceServiceRequest (protobuf, gzip or not).
      ok:   every span recorded, 200 with an empty ExportTraceServiceResponse;
            a body that does not decode: 400, counted in bad_requests
      hang: the same, but never answered (the handler thread sleeps)
      fail: 503, counted in failed; nothing decoded
  GET /spans  {"spans": [{"trace_id", "span_id", "parent_span_id" (hex, ""
              for a root), "name", "kind", "start_unix_nano",
              "end_unix_nano", "status_code", "attributes", "resource",
              "scope"}], "requests": decoded POSTs, "bad_requests": n,
              "failed": n, "bytes": POST bodies' total size on the wire}
  GET /raw    every POST body (gunzipped), concatenated
"""
import argparse
import gzip
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

lock = threading.Lock()
spans, bodies = [], []
stats = {"requests": 0, "bad_requests": 0, "failed": 0, "bytes": 0}
mode = "ok"


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attrs(v.kvlist_value.values)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def decode(body):
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "start_unix_nano": s.start_time_unix_nano,
                    "end_unix_nano": s.end_time_unix_nano,
                    "status_code": s.status.code,
                    "attributes": attrs(s.attributes),
                    "resource": resource,
                    "scope": ss.scope.name,
                })
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body=b"", ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return out
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_POST(self):
        if self.path != "/v1/traces":
            return self.reply(404)
        body = self.read_body()
        try:
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body_plain = gzip.decompress(body)
            else:
                body_plain = body
            got = None if mode == "fail" else decode(body_plain)
        except (DecodeError, OSError, EOFError):
            body_plain, got = body, False
        with lock:
            stats["bytes"] += len(body)
            bodies.append(body_plain)
            if got is None:
                stats["failed"] += 1
            elif got is False:
                stats["bad_requests"] += 1
            else:
                stats["requests"] += 1
                spans.extend(got)
        if got is None:
            return self.reply(503, b"unavailable", "text/plain")
        if got is False:
            return self.reply(400, b"undecodable", "text/plain")
        if mode == "hang":
            time.sleep(3600)
        self.reply(200, ExportTraceServiceResponse().SerializeToString(),
                   "application/x-protobuf")

    def do_GET(self):
        with lock:
            if self.path == "/spans":
                out = json.dumps({"spans": spans, **stats}).encode()
                return self.reply(200, out)
            if self.path == "/raw":
                return self.reply(200, b"".join(bodies), "application/octet-stream")
        self.reply(404)


def main():
    global mode
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--mode", choices=["ok", "hang", "fail"], default="ok")
    args = p.parse_args()
    mode = args.mode
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("listening", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
