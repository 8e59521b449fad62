"""The lecture's first Python server: shows what it got and answers "ok", on port 9898.

Usage: python echo_server.py [HOST] [PORT]     (defaults: every interface, 9898; PORT 0 picks one)
"""

import socket
import sys

HOST = sys.argv[1] if len(sys.argv) > 1 else ""
PORTA = int(sys.argv[2]) if len(sys.argv) > 2 else 9898

with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as socketServidor:
    # SO_REUSEADDR: without it, restarting the server right after stopping it fails with
    # "Address already in use" while the old connections sit in TIME_WAIT.
    socketServidor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    socketServidor.bind((HOST, PORTA))
    # listen(1) is not a limit of one client: it is the queue of connections waiting for accept().
    # The slide's server served one client and ended; this one accepts the next, one at a time.
    socketServidor.listen(1)
    print(f"...esperando conexoes na porta {socketServidor.getsockname()[1]} ...", flush=True)
    try:
        while True:
            conexao, endereco = socketServidor.accept()
            with conexao:
                pendente = b""
                while True:
                    dado = conexao.recv(1024)
                    if not dado:
                        break
                    # One recv is not one message: answer "ok" per line, not per recv (two lines
                    # sent together would get one "ok"; one line in two pieces, two).
                    pendente += dado
                    *linhas, pendente = pendente.split(b"\n")
                    for linha in linhas:
                        print(" >> ", linha + b"\n", flush=True)
                        conexao.sendall(b"ok\n")  # sendall, not send: send may write only part
                if pendente:  # a last line without "\n", seen when the client closed
                    print(" >> ", pendente, flush=True)
                    conexao.sendall(b"ok")
    except KeyboardInterrupt:
        pass  # Ctrl-C is how this server is meant to stop; the with block closes the socket
