"""A gRPC server (grpcio) with unary and server-streaming methods and no
generated code: requests and replies are raw bytes.

    grpc_server.py PORT

/shop.Cart/Get      unary; b"missing" is NOT_FOUND, anything else OK
/shop.Cart/Slow     unary; sleeps 50 ms, OK
/shop.Cart/Hang     unary; sleeps 300 ms (its callers give up before)
/shop.Cart/List     server streaming; as many replies as the request's
                    first byte says, of as many KiB as its second says
                    (1 byte without one)

Prints "listening" once it serves; stops on SIGTERM.
"""
import signal
import sys
import time
from concurrent import futures

import grpc


def get(request, context):
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such cart")
    return b"cart"


def slow(request, context):
    time.sleep(0.05)
    return b"slow"


def hang(request, context):
    time.sleep(0.3)
    return b"late"


def listing(request, context):
    size = request[1] * 1024 if len(request) > 1 else 1
    for i in range(request[0] if request else 1):
        yield bytes([i]) * size


def unary(fn):
    return grpc.unary_unary_rpc_method_handler(fn)


handlers = grpc.method_handlers_generic_handler(
    "shop.Cart",
    {
        "Get": unary(get),
        "Slow": unary(slow),
        "Hang": unary(hang),
        "List": grpc.unary_stream_rpc_method_handler(listing),
    },
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
server.add_generic_rpc_handlers((handlers,))
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
print("listening", flush=True)
server.wait_for_termination()
