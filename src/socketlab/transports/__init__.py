"""The asyncio side of socketlab: servers (and clients) built on asyncio's Protocol/Transport API.

Transports only move bytes between sockets and the sans-IO core (`socketlab.core`); what a service
answers is decided there. Nothing here prints or parses argv: that is the CLI's job.

- `loop`:       choosing the event loop (uvloop when installed, plain asyncio otherwise)
- `binding`:    creating the listening sockets, IPv4 and IPv6, with `OSError` turned into `BindError`
- `tcp_server`: one `StreamSession` per TCP connection, with backpressure and an idle timeout
- `udp_server`: one datagram in, one datagram out
- `chunk_path`, `datagram_path`: what runs per TCP chunk and per UDP datagram, nothing else, so that
                the build can compile them with mypyc; `compiled` picks the compiled copy or the source
- `server`:     the lifecycle: `open_server()` for tests and tools, `serve()` until Ctrl-C/SIGTERM
"""
