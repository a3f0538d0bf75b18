"""The back end of the distributed-trace tests' two-service chain
(trace_front.py calls it): uvicorn --app-dir tests/servers trace_back:app.

Route:
  GET /stock/{id}   200 {"item": id, "stock": 3}; an id with id % 4 == 0
                    answers after 50 ms, one with id % 10 == 7 is a 503
"""
import asyncio

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()


@app.get("/stock/{item_id}")
async def stock(item_id: int):
    if item_id % 4 == 0:
        await asyncio.sleep(0.05)
    if item_id % 10 == 7:
        return JSONResponse({"item": item_id, "error": "unavailable"}, status_code=503)
    return {"item": item_id, "stock": 3}
