// An HTTPS server on Node's own https module (with the OpenSSL that node
// carries, linked in or Debian's libssl):
//   GET  /items/{id}  200, a small JSON
//   GET  /big         200, 200 KiB written in 20 chunks
//   POST /echo        201, once the whole body is read
//   anything else     404
// Usage: node https_server.js PORT CERT KEY; prints "listening" when ready.
'use strict';
const fs = require('fs');
const https = require('https');

const [port, cert, key] = process.argv.slice(2);
const chunk = Buffer.alloc(10 * 1024, 'x');

function big(res) {
  res.writeHead(200, { 'content-type': 'application/octet-stream' });
  let sent = 0;
  const more = () => {
    if (sent++ < 20) {
      res.write(chunk);
      setImmediate(more);
    } else {
      res.end();
    }
  };
  more();
}

const server = https.createServer(
  { cert: fs.readFileSync(cert), key: fs.readFileSync(key) },
  (req, res) => {
    if (req.method === 'GET' && /^\/items\/\d+$/.test(req.url)) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: Number(req.url.slice(7)) }));
    } else if (req.method === 'GET' && req.url === '/big') {
      big(res);
    } else if (req.method === 'POST' && req.url === '/echo') {
      let bytes = 0;
      req.on('data', (d) => { bytes += d.length; });
      req.on('end', () => {
        res.writeHead(201, { 'content-type': 'text/plain' });
        res.end(String(bytes));
      });
    } else {
      req.resume();
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('no\n');
    }
  },
);
server.listen(Number(port), '127.0.0.1', () => console.log('listening'));
