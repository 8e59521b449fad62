"""The slides' UDPServer (Java), in Python: answers each datagram in upper case, on port 9876.

Usage: python udp_server.py [HOST] [PORT]     (defaults: every interface, 9876; PORT 0 picks one)
"""

import socket
import sys

HOST = sys.argv[1] if len(sys.argv) > 1 else ""
PORTA = int(sys.argv[2]) if len(sys.argv) > 2 else 9876

with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as servidor:
    servidor.bind((HOST, PORTA))
    print(f"...esperando datagramas na porta {servidor.getsockname()[1]} ...", flush=True)
    try:
        while True:
            # Decode only the bytes received: the Java UDPServer turns its whole 1024-byte buffer
            # into a String and answers with NUL padding up to 1024 bytes. No connection, so each
            # datagram carries its sender's address and port: that is where the answer goes.
            dados, endereco = servidor.recvfrom(65535)
            frase = dados.decode("utf-8", "replace")
            servidor.sendto(frase.upper().encode("utf-8"), endereco)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how this server is meant to stop; the with block closes the socket
