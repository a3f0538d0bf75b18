"""The front end of the distributed-trace tests' two-service chain:
uvicorn --app-dir tests/servers trace_front:app, with BACK_URL
(http://127.0.0.1:PORT, trace_back.py) and REDIS_URL
(redis://127.0.0.1:PORT/0) set.

Routes:
  GET /order/{id}   GET BACK_URL/stock/{id} (one keep-alive httpx client),
                    then Redis GET and SET of order:{id} (one client);
                    answers with the back end's status (its 503 too),
                    or 500 if either call fails
  GET /counts       {"orders": {"200": n, "503": n, ...}}: the /order
                    requests answered so far, by status (the ground truth)
With OTEL_SDK=1 the OpenTelemetry SDK traces the server side only (service
front-sdk, /counts excluded, no ASGI send/receive spans), exported over
OTLP/HTTP to OTEL_RECEIVER/v1/traces every 200 ms; httpx and Redis are
left to the agent.
"""
import collections
import os
from contextlib import asynccontextmanager

import httpx
import redis.asyncio as redis
from fastapi import FastAPI
from fastapi.responses import JSONResponse

back = httpx.AsyncClient(base_url=os.environ["BACK_URL"])
cache = redis.Redis.from_url(os.environ["REDIS_URL"])
orders = collections.Counter()
provider = None


@asynccontextmanager
async def lifespan(_app):
    yield
    if provider is not None:
        provider.shutdown()  # exports what is still queued


app = FastAPI(lifespan=lifespan)

if os.environ.get("OTEL_SDK") == "1":
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "front-sdk"}))
    exporter = OTLPSpanExporter(endpoint=os.environ["OTEL_RECEIVER"] + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls="/counts",
        exclude_spans=["receive", "send"],
    )


@app.get("/order/{item_id}")
async def order(item_id: int):
    try:
        resp = await back.get(f"/stock/{item_id}")
        key = f"order:{item_id}"
        seen = await cache.get(key)
        await cache.set(key, resp.text)
        status, body = resp.status_code, {"item": item_id, "back": resp.json(),
                                          "repeat": seen is not None}
    except Exception as e:  # noqa: BLE001 - answered (and counted) as a 500
        status, body = 500, {"item": item_id, "error": repr(e)}
    orders[status] += 1
    return JSONResponse(body, status_code=status)


@app.get("/counts")
async def counts():
    return {"orders": {str(k): v for k, v in sorted(orders.items())}}
