"""The sans-IO core: framing, services and per-connection state.

Nothing in this package may import socket, asyncio, selectors or threading: transports (asyncio,
the teaching models, the tools) feed it bytes and send what it returns.
"""
