"""sd_notify against a real datagram socket, as systemd listens."""

from __future__ import annotations

import os
import socket

import pytest

from trainer.daemon.notify import Notifier


@pytest.fixture
def listener(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_messages_arrive_as_utf8_key_value_lines(listener):
    path, sock = listener
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    notifier.ready("training item 3 — loss 2.1\nsecond line")
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=training item 3 — loss 2.1 second line"
    notifier.extend_timeout(90)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=90000000"


def test_abstract_socket_addresses_work():
    name = f"trainer-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "30000000"}).watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_a_socket_every_call_is_a_no_op():
    notifier = Notifier({})
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping()


def test_errors_are_raised_not_swallowed(tmp_path):
    with pytest.raises(OSError):
        Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}).ready("x")


def test_the_watchdog_interval_is_ours_only_when_the_pid_matches():
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_usec == 30_000_000
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_usec == 30_000_000
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_usec is None


def test_watchdog_pings_go_only_to_a_watchdog_meant_for_this_process(listener):
    path, sock = listener
    sock.settimeout(0.2)
    Notifier({"NOTIFY_SOCKET": str(path)}).watchdog()  # no watchdog configured: nothing sent
    Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog()
    with pytest.raises(TimeoutError):
        sock.recv(100)
    Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}).watchdog()
    assert sock.recv(100) == b"WATCHDOG=1"


def test_a_lost_group_asks_for_a_longer_watchdog_and_ready_restores_the_unit_s(listener):
    path, sock = listener
    watched = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "6000000"})
    watched.watchdog_timeout(600)
    assert sock.recv(4096) == b"WATCHDOG_USEC=600000000"
    watched.ready("idle")
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=idle\nWATCHDOG_USEC=6000000"
    # Without a watchdog, asking for a longer one would arm one that nobody feeds: nothing sent.
    Notifier({"NOTIFY_SOCKET": str(path)}).watchdog_timeout(600)
    Notifier({"NOTIFY_SOCKET": str(path)}).status("idle")
    assert sock.recv(4096) == b"STATUS=idle"
