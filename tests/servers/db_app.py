"""A FastAPI application backed by PostgreSQL through SQLAlchemy's async
engine, for the client-side SQL tests: uvicorn --app-dir tests/servers
db_app:app, with DATABASE_URL set (postgresql+asyncpg://... or
postgresql+psycopg://...).

Routes, each one statement (in SQLAlchemy's own transaction):
  GET  /items/{id}   SELECT name FROM items WHERE id = :id  (404 if none)
  POST /items/{id}   INSERT INTO items (id, name) VALUES (:id, :name);
                     an existing id is a unique violation: 409
  PUT  /items/{id}   UPDATE items SET name = :name WHERE id = :id
  GET  /slow         SELECT pg_sleep(0.05)
The table is created at startup, before the agent's counts are read;
its pool connection is kept for the requests (one older than the agent:
joined at its next request), or with FRESH_POOL=1 closed, so that the
requests open a new one (its startup seen).
"""
import os

from fastapi import FastAPI, Response
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(os.environ["DATABASE_URL"], pool_size=2)
app = FastAPI()


@app.on_event("startup")
async def schema():
    async with engine.begin() as conn:
        await conn.execute(
            text("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text)")
        )
    if os.environ.get("FRESH_POOL") == "1":
        await engine.dispose()


@app.get("/items/{item_id}")
async def get_item(item_id: int, response: Response):
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                text("SELECT name FROM items WHERE id = :id"), {"id": item_id}
            )
        ).first()
    if row is None:
        response.status_code = 404
        return {}
    return {"id": item_id, "name": row[0]}


@app.post("/items/{item_id}")
async def add_item(item_id: int, response: Response):
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO items (id, name) VALUES (:id, :name)"),
                {"id": item_id, "name": f"secret-item-{item_id}@example.com"},
            )
    except IntegrityError:
        response.status_code = 409
        return {}
    response.status_code = 201
    return {}


@app.put("/items/{item_id}")
async def rename_item(item_id: int):
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE items SET name = :name WHERE id = :id"),
            {"id": item_id, "name": f"renamed-{item_id}"},
        )
    return {}


@app.get("/slow")
async def slow():
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_sleep(0.05)"))
    return {}
