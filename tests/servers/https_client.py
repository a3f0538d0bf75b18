"""Drives an HTTPS server with httpx, the way a service's callers do, and
prints what it got as one JSON line: {"ROUTE STATUS": count}.

    https_client.py BASE_URL ROUNDS SPEC...

Each SPEC is "METHOD PATH ROUTE": PATH may hold {n} (the round number);
ROUTE is the route template the request belongs to. Each round sends
every SPEC once on one keep-alive connection; every third round sends
them again, each on a new connection. POSTs carry a JSON body of about
20 KiB (several TLS records and TCP segments). The certificate is the
test's own and not checked.
"""
import json
import sys

import httpx

base, rounds = sys.argv[1], int(sys.argv[2])
specs = [spec.split(" ") for spec in sys.argv[3:]]
body = {"items": [{"sku": f"sku-{i}", "qty": i} for i in range(700)]}
counts = {}


def send(client, method, path, route, n):
    response = client.request(
        method,
        base + path.replace("{n}", str(n)),
        json=body if method == "POST" else None,
    )
    response.read()
    key = f"{route} {response.status_code}"
    counts[key] = counts.get(key, 0) + 1


with httpx.Client(verify=False, timeout=30) as keep:
    for n in range(rounds):
        for method, path, route in specs:
            send(keep, method, path, route, n)
        if n % 3 == 0:
            for method, path, route in specs:
                with httpx.Client(verify=False, timeout=30) as fresh:
                    send(fresh, method, path, route, n)
print(json.dumps(counts), flush=True)
