"""The lecture's first Python client: sends "Echo" to port 9898 and prints the answer.

Usage: python echo_client.py [HOST] [PORT]     (defaults: localhost, 9898)
"""

import socket
import sys

SERVIDOR = sys.argv[1] if len(sys.argv) > 1 else "localhost"
PORTA = int(sys.argv[2]) if len(sys.argv) > 2 else 9898

print("Iniciando cliente")
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as socketCliente:
    socketCliente.connect((SERVIDOR, PORTA))
    socketCliente.sendall(b"Echo\n")  # sendall, not send: send may write only part of the bytes
    # Nothing more to send: say so (FIN). The server sees the end and closes after answering.
    socketCliente.shutdown(socket.SHUT_WR)
    data = b""
    # One recv is not one message: the answer may come in pieces. Read until the server closes;
    # this works whether it answers "ok" (the slide's server) or "ok\n" (socketlab's ack).
    while pedaco := socketCliente.recv(1024):
        data += pedaco

print("Resposta: ", data.decode("utf-8").rstrip("\r\n"))
