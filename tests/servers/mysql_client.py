"""A MySQL/MariaDB client for the SQL tests, keeping its own counts:
PyMySQL for the text protocol (COM_QUERY), mysql-connector-python's pure
implementation for prepared statements (COM_STMT_PREPARE, then
COM_STMT_EXECUTE; its C extension is not used).

    mysql_client.py HOST PORT PASSWORD [LISTEN_PORT]

Connects as `apm` to database `shop`, which holds `items (id, name, qty)`
and `wide (id, pad)`. With LISTEN_PORT it also listens on
127.0.0.1:LISTEN_PORT (what makes the agent monitor it as a service).
Prints "ready", then obeys stdin, one command a line, each with a JSON
argument, each answered with one line "counts JSON": the statements it
ran, as {"OPERATION|TABLE|ERRNO": n} (ERRNO empty on success), plus
"_seconds", the wall time of `sql`'s statements, and for `prepared`,
"_prepared", {statement text: [executes, errors]}:

  text {"rounds": R, "big_rows": B, "bigs": K, "base": ID}
        about 4 R statements over two new connections: INSERT, SELECT
        (one of them IN (...)), UPDATE, BEGIN/UPDATE/COMMIT, DELETE,
        failing ones (1062, 1064, 1146), K results of B rows of 200
        bytes, multi-statement queries (one failing in the middle: the
        rest is not run), and pings and COM_INIT_DB, which are not
        operations
  prepared {"rounds": R, "base": ID}
        3 R executes of three prepared statements (INSERT, SELECT,
        UPDATE), R/10 more failing at execute time (1062), three
        prepares that fail (1146, not operations), and R/10 times a
        SELECT then a DELETE on one cursor (each prepared anew, the
        other closed with COM_STMT_CLOSE, on the same connection); the
        three statements stay open (their performance_schema rows with
        them) until `close`, and only they are in "_prepared"
  close   closes the prepared statements' connection; answers "closed"
  open {}
        opens a PyMySQL connection and a mysql-connector one that
        prepares `SELECT name, qty FROM items WHERE id = ?`, and uses
        each once: connections older than an agent started after
  reuse {"n": N, "base": ID}
        on `open`'s connections: a ping, N SELECTs and N UPDATEs by id and one
        failing SELECT (1146), and N executes of the statement prepared
        before, counted as UNKNOWN on no table (its text was never seen
        by an agent started after the prepare)
  sql {"n": N, "sql": S, "op": O, "table": T, "code": C}
        S N times on one new connection, each expected to end with C

With APM_MYSQL_TLS set in its environment, PyMySQL's connections use TLS.
Each new PyMySQL (>= 1.1) connection sends `SET NAMES utf8mb4` itself,
and each mysql-connector one `SET NAMES ... COLLATE ...` and
`SET @@session.autocommit = ON`, all over COM_QUERY: they are counted
here as the SET statements they are. Exits when stdin closes.
"""
import json
import os
import socket
import ssl
import sys
import time

import mysql.connector
import pymysql
from pymysql.constants import CLIENT

host, port, password = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if len(sys.argv) > 4:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[4])))
    listener.listen()

counts = {}


def count(op, table, code, n=1):
    key = f"{op}|{table}|{code or ''}"
    counts[key] = counts.get(key, 0) + n


def tls():
    """With APM_MYSQL_TLS set: TLS, the server's certificate unchecked
    (the test made it)."""
    if not os.environ.get("APM_MYSQL_TLS"):
        return None
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect(multi=False):
    c = pymysql.connect(
        ssl=tls(),
        host=host,
        port=port,
        user="apm",
        password=password,
        database="shop",
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS if multi else 0,
    )
    count("SET", "", 0)
    return c


def connector():
    """A mysql-connector connection (pure Python), counting the two SETs
    it sends itself."""
    c = mysql.connector.connect(
        host=host,
        port=port,
        user="apm",
        password=password,
        database="shop",
        use_pure=True,
        ssl_disabled=True,
        autocommit=True,
    )
    count("SET", "", 0, 2)
    return c


def run(cur, sql, op, table, expect=0):
    code = 0
    try:
        cur.execute(sql)
        cur.fetchall()
    except pymysql.MySQLError as e:
        code = e.args[0]
    if code != expect:
        sys.exit(f"{sql!r} ended with {code}, expected {expect}")
    count(op, table, code)


def run_multi(cur, sql, parts):
    """One COM_QUERY of several statements: parts, each (op, table,
    expected errno); the server stops at the first that fails."""
    done = 0
    try:
        cur.execute(sql)
        cur.fetchall()
        done = 1
        while cur.nextset():
            cur.fetchall()
            done += 1
        code = 0
    except pymysql.MySQLError as e:
        code = e.args[0]
    for op, table, expect in parts[:done]:
        if expect:
            sys.exit(f"{sql!r}: {op} succeeded, expected {expect}")
        count(op, table, 0)
    if code:
        op, table, expect = parts[done]
        if code != expect:
            sys.exit(f"{sql!r}: {op} ended with {code}, expected {expect}")
        count(op, table, code)
    elif done != len(parts):
        sys.exit(f"{sql!r}: {done} results of {len(parts)}")


def text(rounds, big_rows, bigs, base):
    c = connect()
    cur = c.cursor()
    for i in range(base, base + rounds):
        run(cur, f"INSERT INTO items (id, name, qty) VALUES ({i}, 'item-{i}', {i})",
            "INSERT", "items")
        run(cur, f"SELECT name, qty FROM items WHERE id = {i}", "SELECT", "items")
        run(cur, f"UPDATE items SET qty = qty + 1 WHERE id = {i}", "UPDATE", "items")
        if i % 4 == 0:
            run(cur, f"SELECT id FROM items WHERE id IN ({i}, {i + 1}, {i + 2})",
                "SELECT", "items")
        if i % 10 == 0:
            run(cur, "BEGIN", "BEGIN", "")
            run(cur, f"UPDATE `items` SET name = 'renamed-{i}' WHERE id = {i}",
                "UPDATE", "items")
            run(cur, "COMMIT", "COMMIT", "")
        if i % 20 == 0:
            run(cur, f"INSERT INTO items (id, name, qty) VALUES ({i}, 'again', 0)",
                "INSERT", "items", 1062)
            run(cur, "SELECT name FROM items WHERE", "SELECT", "items", 1064)
            run(cur, f"SELECT name FROM no_such_table WHERE id = {i}",
                "SELECT", "no_such_table", 1146)
        if i % 25 == 0:
            run(cur, f"DELETE FROM items WHERE id = {i}", "DELETE", "items")
    for _ in range(bigs):
        run(cur, f"SELECT id, pad FROM wide ORDER BY id LIMIT {big_rows}", "SELECT", "wide")
    for _ in range(5):
        c.ping(reconnect=False)
        c.select_db("shop")
    c.close()
    c = connect(multi=True)
    cur = c.cursor()
    for i in range(base, base + max(rounds // 8, 1)):
        run_multi(
            cur,
            f"SELECT COUNT(*) FROM items; UPDATE items SET qty = qty + 1 WHERE id = {i}; "
            f"SELECT {i}",
            [("SELECT", "items", 0), ("UPDATE", "items", 0), ("SELECT", "", 0)],
        )
    for _ in range(5):
        run_multi(
            cur,
            f"SELECT 1; INSERT INTO items (id, name, qty) VALUES ({base + 1}, 'dup', 1); "
            "SELECT 2",
            [("SELECT", "", 0), ("INSERT", "items", 1062), ("SELECT", "", 0)],
        )
    c.close()


held = []


def prepared(rounds, base):
    c = connector()
    held.append(c)
    texts = {}

    def execute(cur, sql, params, op, expect=0, kept=True):
        code = 0
        try:
            cur.execute(sql, params)
            if cur.with_rows:
                cur.fetchall()
        except mysql.connector.Error as e:
            code = e.errno
        if code != expect:
            sys.exit(f"{sql!r} {params} ended with {code}, expected {expect}")
        count(op, "items", code)
        if not kept:
            return
        done = texts.setdefault(sql, [0, 0])
        done[0] += 1
        done[1] += 1 if code else 0

    insert = "INSERT INTO items (id, name, qty) VALUES (?, ?, ?)"
    select = "SELECT name, qty FROM items WHERE id = ?"
    update = "UPDATE items SET qty = qty + ? WHERE id = ?"
    ins, sel, upd = (c.cursor(prepared=True) for _ in range(3))
    for i in range(base, base + rounds):
        execute(ins, insert, (i, f"prepared-{i}", i), "INSERT")
        execute(sel, select, (i,), "SELECT")
        execute(upd, update, (1, i), "UPDATE")
        if i % 10 == 0:
            execute(ins, insert, (i, "again", 0), "INSERT", 1062)
    for _ in range(3):
        bad = c.cursor(prepared=True)
        try:
            bad.execute("SELECT name FROM no_such_table WHERE id = ?", (1,))
            sys.exit("a prepare of a missing table succeeded")
        except mysql.connector.Error as e:
            if e.errno != 1146:
                sys.exit(f"the failing prepare ended with {e.errno}")
    mix = c.cursor(prepared=True)
    for i in range(base, base + rounds // 10):
        execute(mix, "SELECT qty FROM items WHERE id = ?", (i,), "SELECT", kept=False)
        execute(mix, "DELETE FROM items WHERE id = ? AND qty < 0", (i,), "DELETE", kept=False)
    mix.close()
    held.extend([ins, sel, upd])
    counts["_prepared"] = texts


kept = {}


def open_():
    kept["text"] = connect()
    run(kept["text"].cursor(), "SELECT 1", "SELECT", "")
    c = connector()
    kept["conn"] = c
    kept["prepared"] = c.cursor(prepared=True)
    kept["prepared"].execute("SELECT name, qty FROM items WHERE id = ?", (1,))
    kept["prepared"].fetchall()
    count("SELECT", "items", 0)


def reuse(n, base):
    # A pool's pre-ping first (COM_PING, no statement).
    kept["text"].ping(reconnect=False)
    cur = kept["text"].cursor()
    for i in range(base, base + n):
        run(cur, f"SELECT name FROM items WHERE id = {i}", "SELECT", "items")
        run(cur, f"UPDATE items SET qty = qty + 1 WHERE id = {i}", "UPDATE", "items")
    run(cur, "SELECT name FROM no_such_table", "SELECT", "no_such_table", 1146)
    sel = kept["prepared"]
    for i in range(base, base + n):
        sel.execute("SELECT name, qty FROM items WHERE id = ?", (i,))
        sel.fetchall()
        count("UNKNOWN", "", 0)


def sql(n, statement, op, table, code):
    c = connect()
    cur = c.cursor()
    spent = 0.0
    for _ in range(n):
        start = time.perf_counter()
        run(cur, statement, op, table, code)
        spent += time.perf_counter() - start
    c.close()
    counts["_seconds"] = spent


print("ready", flush=True)
for line in sys.stdin:
    command, _, arg = line.strip().partition(" ")
    counts = {}
    if command == "text":
        a = json.loads(arg)
        text(a["rounds"], a["big_rows"], a["bigs"], a["base"])
    elif command == "prepared":
        a = json.loads(arg)
        prepared(a["rounds"], a["base"])
    elif command == "sql":
        a = json.loads(arg)
        sql(a["n"], a["sql"], a["op"], a["table"], a.get("code", 0))
    elif command == "open":
        open_()
    elif command == "reuse":
        a = json.loads(arg)
        reuse(a["n"], a["base"])
    elif command == "close":
        for h in reversed(held):
            h.close()
        held.clear()
        print("closed", flush=True)
        continue
    else:
        sys.exit(f"unknown command {command!r}")
    print("counts " + json.dumps(counts), flush=True)
