"""A user's function whose answer grows a thousandfold: the server must hold it to 3 x --max-line."""


def grow(line: str) -> str:
    return line * 1000
