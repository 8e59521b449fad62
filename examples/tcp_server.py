"""The slides' TCPServer (Java), in Python: answers each line in upper case, on port 6789.

Usage: python tcp_server.py [HOST] [PORT]     (defaults: every interface, 6789; PORT 0 picks one)
"""

import socket
import sys

HOST = sys.argv[1] if len(sys.argv) > 1 else ""
PORTA = int(sys.argv[2]) if len(sys.argv) > 2 else 6789


def decodifica(linha: bytes) -> tuple[str, str]:
    """The text of a line and the encoding it came in, to answer in the same one."""
    try:
        return linha.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        # Java's writeBytes (the slides' TCPClient) drops the high byte of every char: it sends
        # Portuguese as Latin-1, one byte per char, which is not valid UTF-8.
        return linha.decode("latin-1"), "latin-1"


def maiusculas(linha: bytes) -> bytes:
    texto, codificacao = decodifica(linha)
    return texto.upper().encode(codificacao, "replace")


with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as servidor:
    # SO_REUSEADDR: without it, restarting the server right after stopping it fails with
    # "Address already in use" while the old connections sit in TIME_WAIT.
    servidor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    servidor.bind((HOST, PORTA))
    # listen(5) is not a limit of 5 clients: it is the queue of connections the kernel has
    # completed and that wait for accept().
    servidor.listen(5)
    print(f"...esperando conexões na porta {servidor.getsockname()[1]} ...", flush=True)
    try:
        while True:
            conexao, endereco = servidor.accept()
            # The client's source port tells clients apart: two clients on one machine differ there.
            print("conexão de", endereco, flush=True)
            with conexao:  # the slide never closes connectionSocket; we do, when the client leaves
                pendente = b""
                while True:
                    pedaco = conexao.recv(1024)
                    if not pedaco:
                        break
                    # One recv is not one message: a line may come in pieces, or several lines in
                    # one piece. Keep what has no "\n" yet; answer only whole lines.
                    pendente += pedaco
                    *linhas, pendente = pendente.split(b"\n")
                    for linha in linhas:
                        # sendall, not send: send may write only part of the bytes.
                        conexao.sendall(maiusculas(linha) + b"\n")
    except KeyboardInterrupt:
        pass  # Ctrl-C is how this server is meant to stop; the with block closes the socket
