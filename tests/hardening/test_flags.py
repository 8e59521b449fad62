"""The hardening flags of `serve` as the config sees them, and the descriptor-limit check. No network."""

from __future__ import annotations

import argparse
import logging

import pytest

from socketlab.cli import EXIT_USAGE, main
from socketlab.cli.serve import UsageError, build_config
from socketlab.config import Limits
from socketlab.transports.server import FD_RESERVE, fit_max_connections


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    from socketlab.cli import serve  # noqa: PLC0415

    serve.add_parser(subparsers)
    return parser.parse_args(["serve", *argv])


def test_defaults_are_the_documented_ones() -> None:
    limits = build_config(_args("tcp")).limits
    assert (limits.max_line, limits.idle_timeout, limits.line_deadline, limits.send_timeout) == (
        16 * 1024,
        60.0,
        30.0,
        30.0,
    )
    assert (limits.max_connections, limits.max_per_address) == (1024, 64)
    assert (limits.udp_rate, limits.udp_burst, limits.limit_loopback) == (100.0, 200, False)
    assert limits.tls_handshake_timeout == 10.0


def test_each_limit_is_a_flag_with_units_and_zero_turns_it_off() -> None:
    config = build_config(
        _args(
            "tcp",
            "--max-line",
            "1M",
            "--idle-timeout",
            "2min",
            "--line-deadline",
            "500ms",
            "--send-timeout",
            "0",
            "--max-connections",
            "0",
            "--max-per-address",
            "3",
            "--udp-rate",
            "0",
            "--limit-loopback",
            "--udp-drop-privileged-ports",
            "--allow",
            "10.0.0.0/8",
            "--deny",
            "10.1.0.0/16",
        )
    )
    limits = config.limits
    assert limits.max_line == 1024 * 1024
    assert limits.idle_timeout == 120.0
    assert limits.line_deadline == 0.5
    assert limits.send_timeout == 0
    assert limits.max_connections == 0
    assert limits.max_per_address == 3
    assert limits.udp_rate == 0
    assert limits.limit_loopback
    assert limits.udp_drop_privileged_ports
    assert config.access.allow == ("10.0.0.0/8",)
    assert config.access.deny == ("10.1.0.0/16",)


@pytest.mark.parametrize(
    "argv",
    [
        ["tcp", "--udp-rate", "fast"],
        ["tcp", "--max-connections", "-1"],
        ["tcp", "--line-deadline", "soon"],
        ["tcp", "--allow", "10.0.0.1/8"],  # host bits set: a likely typo
        ["tcp", "--deny", "not-an-address"],
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", *argv])
    assert exit_info.value.code == EXIT_USAGE
    assert "error" in capsys.readouterr().err


def test_tls_needs_both_files_and_tcp() -> None:
    with pytest.raises(UsageError):
        build_config(_args("tcp", "--tls-cert", "c.pem"))
    with pytest.raises(UsageError):
        build_config(_args("udp", "--tls-cert", "c.pem", "--tls-key", "k.pem"))


def test_a_missing_allow_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "tcp", "--port", "0", "--allow-file", "/nonexistent/allow.txt"]) == EXIT_USAGE
    assert "/nonexistent/allow.txt" in capsys.readouterr().err


def test_max_connections_is_fitted_to_the_descriptor_limit() -> None:
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log = logging.getLogger("test")
    # Within the limit: unchanged.
    assert fit_max_connections(Limits(max_connections=10), log).max_connections == 10
    # Off: unchanged whatever the limit.
    assert fit_max_connections(Limits(max_connections=0), log).max_connections == 0
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit to exceed")
    # Beyond the hard limit: lowered to what it leaves after the reserve.
    fitted = fit_max_connections(Limits(max_connections=hard * 2), log)
    assert fitted.max_connections == max(1, hard - FD_RESERVE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
