"""Loopback ports for the servers Tierflow starts itself (all bound to 127.0.0.1 only)."""

import socket


def free_ports(count: int = 1) -> list[int]:
    """`count` distinct free 127.0.0.1 ports. Another process may still take one before the
    caller binds it; launchers retry with new ports when that happens."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)  # held open until all are chosen, so the ports are distinct
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
