"""A TLS server for the agent to monitor in `--case tls-bystander`.

    tls_server.py socket|asyncio PORT CERT KEY

`socket`: Python's blocking ssl (socket BIOs, as nginx, Go and curl);
`asyncio`: asyncio's streams (memory BIOs, which the agent once tied
with a read note on every socket read of the host; now as they send).
It only listens: no traffic, it is there to be probed.
Prints "listening" and runs until stdin closes.
"""
import socket
import ssl
import sys

mode, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)

if mode == "asyncio":
    import asyncio

    async def main():
        server = await asyncio.start_server(
            lambda r, w: w.close(), "127.0.0.1", port, ssl=ctx
        )
        print("listening", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(main())
else:
    listener = socket.create_server(("127.0.0.1", port))
    print("listening", flush=True)
    sys.stdin.read()
