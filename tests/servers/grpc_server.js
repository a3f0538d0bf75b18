// A gRPC server over TLS (@grpc/grpc-js on Node's http2 and OpenSSL)
// with the methods of grpc_server.py and no generated code: requests and
// replies are raw bytes.
//
//     node grpc_server.js PORT CERT KEY
//
// /shop.Cart/Get   unary; "missing" is NOT_FOUND, anything else OK
// /shop.Cart/Slow  unary; waits 50 ms, OK
// /shop.Cart/Hang  unary; waits 300 ms (its callers give up before)
// /shop.Cart/List  server streaming; as many replies as the request's
//                  first byte says, of as many KiB as its second says
//
// Prints "listening" once it serves; stops on SIGTERM.
"use strict";
const fs = require("fs");
const grpc = require("@grpc/grpc-js");

const [port, certFile, keyFile] = process.argv.slice(2);
const raw = (b) => b;
const server = new grpc.Server();
const unary = (path, fn) =>
  server.register(path, fn, raw, raw, "unary");

unary("/shop.Cart/Get", (call, done) => {
  if (call.request.toString() === "missing") {
    done({ code: grpc.status.NOT_FOUND, details: "no such cart" });
  } else {
    done(null, Buffer.from("cart"));
  }
});
unary("/shop.Cart/Slow", (call, done) =>
  setTimeout(() => done(null, Buffer.from("slow")), 50));
unary("/shop.Cart/Hang", (call, done) =>
  setTimeout(() => done(null, Buffer.from("late")), 300));
server.register(
  "/shop.Cart/List",
  (call) => {
    const n = call.request.length ? call.request[0] : 1;
    const size = call.request.length > 1 ? call.request[1] * 1024 : 1;
    for (let i = 0; i < n; i++) call.write(Buffer.alloc(size, i));
    call.end();
  },
  raw,
  raw,
  "serverStream",
);

const creds = grpc.ServerCredentials.createSsl(null, [
  { cert_chain: fs.readFileSync(certFile), private_key: fs.readFileSync(keyFile) },
]);
server.bindAsync(`127.0.0.1:${port}`, creds, (err) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
  console.log("listening");
});
process.on("SIGTERM", () => server.forceShutdown());
