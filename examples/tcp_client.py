"""The slides' TCPClient (Java), in Python: sends one line read from the keyboard to port 6789 and
prints the answer in upper case.

Usage: python tcp_client.py [HOST] [PORT]     (defaults: localhost, 6789)
"""

import socket
import sys

SERVIDOR = sys.argv[1] if len(sys.argv) > 1 else "localhost"
PORTA = int(sys.argv[2]) if len(sys.argv) > 2 else 6789

frase = sys.stdin.readline().rstrip("\n")

with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as cliente:
    cliente.connect((SERVIDOR, PORTA))
    # UTF-8, and sendall: Java's writeBytes drops the high byte of every char ("ação" leaves as
    # Latin-1, anything beyond Latin-1 is garbled), and send may write only part of the bytes.
    cliente.sendall(frase.encode("utf-8") + b"\n")
    resposta = b""
    # One recv is not one message: the line may come back in pieces. Read up to its "\n".
    while not resposta.endswith(b"\n"):
        pedaco = cliente.recv(1024)
        if not pedaco:
            break  # the server closed the connection before the end of the line
        resposta += pedaco

print("FROM SERVER: " + resposta.decode("utf-8", "replace").rstrip("\r\n"))
