"""The slides' UDPClient (Java), in Python: sends one line read from the keyboard as a datagram to
port 9876 and prints the answer.

Usage: python udp_client.py [HOST] [PORT]     (defaults: localhost, 9876)
"""

import socket
import sys

SERVIDOR = sys.argv[1] if len(sys.argv) > 1 else "localhost"
PORTA = int(sys.argv[2]) if len(sys.argv) > 2 else 9876
TENTATIVAS = 3

frase = sys.stdin.readline().rstrip("\n")
endereco = socket.getaddrinfo(SERVIDOR, PORTA, socket.AF_INET, socket.SOCK_DGRAM)[0][4]

with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cliente:
    # A UDP client needs a timeout: the datagram or its answer may be lost, and the Java
    # UDPClient would then wait forever in receive(). Here: wait 1 s, try again, 3 times at most.
    cliente.settimeout(1.0)
    for _tentativa in range(TENTATIVAS):
        cliente.sendto(frase.encode("utf-8"), endereco)
        try:
            resposta, _servidor = cliente.recvfrom(65535)
            break
        except TimeoutError:
            continue
    else:
        print("sem resposta do servidor", file=sys.stderr)
        sys.exit(1)

# The original UDPServer pads its answer with NUL bytes up to 1024: show the text, not the padding.
print("FROM SERVER:" + resposta.rstrip(b"\0").decode("utf-8", "replace"))
