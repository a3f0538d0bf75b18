// A monitored service's outbound calls over TLS, from Node: gRPC calls
// with @grpc/grpc-js (no generated code: raw bytes) and plain HTTP/2
// GETs with node:http2, both trusting the PEM certificate CA.
//
//     node grpc_client.js LPORT PORT CA
//
// Listens on 127.0.0.1:LPORT (which makes it a service to the agent),
// prints "ready", and on each line "go N" on stdin runs N rounds against
// 127.0.0.1:PORT and prints what it got as one JSON line:
// {"METHOD STATUS": count} for gRPC calls, {"GET PATH STATUS": count}
// for the GETs. A round: Get ×2 (OK), Get "missing" (NOT_FOUND), Slow
// (OK), List of 2 replies of 12 KiB (OK), Hang with a 100 ms deadline
// (DEADLINE_EXCEEDED), and one GET of /shop.Cart/Get.
"use strict";
const fs = require("fs");
const net = require("net");
const http2 = require("http2");
const readline = require("readline");
const grpc = require("@grpc/grpc-js");

const [lport, port, caFile] = process.argv.slice(2);
const ca = fs.readFileSync(caFile);
const raw = (b) => b;
const target = `127.0.0.1:${port}`;
const client = new grpc.Client(target, grpc.credentials.createSsl(ca), {
  "grpc.ssl_target_name_override": "localhost",
});

function count(counts, key) {
  counts[key] = (counts[key] || 0) + 1;
}

function unary(counts, method, request, timeoutMs) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + timeoutMs);
    client.makeUnaryRequest(method, raw, raw, Buffer.from(request), { deadline }, (err) => {
      count(counts, `${method} ${err ? grpc.status[err.code] : "OK"}`);
      resolve();
    });
  });
}

function stream(counts, method, n, kib) {
  return new Promise((resolve) => {
    const call = client.makeServerStreamRequest(method, raw, raw, Buffer.from([n, kib]), {
      deadline: new Date(Date.now() + 5000),
    });
    call.on("data", () => {});
    call.on("status", (s) => {
      count(counts, `${method} ${grpc.status[s.code]}`);
      resolve();
    });
    call.on("error", () => {});
  });
}

function get(counts, session, path) {
  return new Promise((resolve) => {
    const req = session.request({ ":method": "GET", ":path": path });
    req.setTimeout(5000, () => req.close(http2.constants.NGHTTP2_CANCEL));
    let status = 0;
    req.on("response", (h) => (status = h[":status"]));
    req.on("data", () => {});
    req.on("end", () => {
      count(counts, `GET ${path} ${status}`);
      resolve();
    });
    req.on("error", () => {
      count(counts, `GET ${path} error`);
      resolve();
    });
    req.end();
  });
}

async function rounds(n) {
  const counts = {};
  const session = http2.connect(`https://${target}`, { ca, servername: "localhost" });
  for (let i = 0; i < n; i++) {
    await unary(counts, "/shop.Cart/Get", "cart-1", 5000);
    await unary(counts, "/shop.Cart/Get", "cart-2", 5000);
    await unary(counts, "/shop.Cart/Get", "missing", 5000);
    await unary(counts, "/shop.Cart/Slow", "", 5000);
    await stream(counts, "/shop.Cart/List", 2, 12);
    await unary(counts, "/shop.Cart/Hang", "", 100);
    await get(counts, session, "/shop.Cart/Get");
  }
  session.close();
  return counts;
}

const listener = net.createServer((s) => s.destroy());
listener.listen(Number(lport), "127.0.0.1", () => console.log("ready"));
const lines = readline.createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const [word, n] = line.trim().split(" ");
  if (word !== "go") return;
  console.log(JSON.stringify(await rounds(Number(n))));
});
lines.on("close", () => {
  client.close();
  listener.close();
});
