"""Settings from the environment and the API token file."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfyvn.core.env import EnvError, env_flag, env_number, env_number_or_default
from comfyvn.core.settings import Settings, ensure_token, read_token
from comfyvn.server.security import RedactingFormatter, redact, register_secret

from .support import ROOT


def test_env_number_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYVN_X", "abc")
    with pytest.raises(EnvError, match="COMFYVN_X='abc' is not a number"):
        env_number("COMFYVN_X", 1.0)
    monkeypatch.setenv("COMFYVN_X", "nan")
    with pytest.raises(EnvError):
        env_number("COMFYVN_X", 1.0)
    monkeypatch.setenv("COMFYVN_X", "-2")
    with pytest.raises(EnvError, match="below the minimum"):
        env_number("COMFYVN_X", 1.0, minimum=0)
    monkeypatch.setenv("COMFYVN_X", "2.5")
    with pytest.raises(EnvError, match="whole number"):
        env_number("COMFYVN_X", 1, integer=True)
    assert env_number("COMFYVN_X", 1.0) == 2.5
    monkeypatch.delenv("COMFYVN_X")
    assert env_number("COMFYVN_X", 7.0) == 7.0


def test_lenient_numbers_log_and_keep_the_default(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("COMFYVN_Y", "soon")
    log = logging.getLogger("comfyvn.test")
    with caplog.at_level(logging.WARNING, logger="comfyvn.test"):
        assert env_number_or_default("COMFYVN_Y", 3.0, log=log) == 3.0
    assert "COMFYVN_Y='soon'" in caplog.text


def test_env_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, expected in (("1", True), ("Yes", True), ("off", False), ("", False)):
        monkeypatch.setenv("COMFYVN_F", raw)
        assert env_flag("COMFYVN_F") is expected
    monkeypatch.setenv("COMFYVN_F", "maybe")
    with pytest.raises(EnvError, match="COMFYVN_F"):
        env_flag("COMFYVN_F")


def test_bad_server_knob_stops_serve_with_its_name(tmp_path: Path) -> None:
    env = {**os.environ, "COMFYVN_COMMIT_TIMEOUT": "ten"}
    result = subprocess.run(
        [sys.executable, "-m", "comfyvn", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "COMFYVN_COMMIT_TIMEOUT='ten' is not a number" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_file_is_created_once_and_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COMFYVN_API_TOKEN", raising=False)
    settings = Settings(data_dir=tmp_path)
    token = ensure_token(settings)
    assert len(token) >= 32 and read_token(tmp_path) == token
    assert (tmp_path / "api_token").stat().st_mode & 0o777 == 0o600
    assert ensure_token(Settings(data_dir=tmp_path)) == token
    assert [p.name for p in tmp_path.iterdir()] == ["api_token"]  # no temp file left


def test_an_empty_token_file_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFYVN_API_TOKEN", raising=False)
    (tmp_path / "api_token").write_text("")
    token = ensure_token(Settings(data_dir=tmp_path))
    assert token and read_token(tmp_path) == token


def test_a_readable_token_file_is_made_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COMFYVN_API_TOKEN", raising=False)
    path = tmp_path / "api_token"
    path.write_text("a-token-that-is-long-enough\n")
    path.chmod(0o644)
    assert ensure_token(Settings(data_dir=tmp_path)) == "a-token-that-is-long-enough"
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_short_token_from_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMFYVN_API_TOKEN", "abc")
    with pytest.raises(EnvError, match="at least 16"):
        ensure_token(Settings(data_dir=tmp_path))


def test_tracebacks_are_redacted_too() -> None:
    formatter = RedactingFormatter("%(message)s")
    try:
        raise RuntimeError("GET /api/x?token=s3cr3t-value failed")
    except RuntimeError:
        record = logging.LogRecord(
            "comfyvn.child",
            logging.ERROR,
            __file__,
            1,
            "boom: %s",
            ("Bearer abcdef123456",),
            sys.exc_info(),
        )
    line = formatter.format(record)
    assert "s3cr3t-value" not in line and "abcdef123456" not in line
    assert "[redacted]" in line


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
    return subprocess.run(
        [sys.executable, "-m", "comfyvn", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_port_is_named_and_breaks_no_other_command(tmp_path: Path) -> None:
    bad_port = {"COMFYVN_PORT": "eighty"}
    docs = run_cli("hooks", "docs", "--check", env=bad_port)  # never reads the port
    assert docs.returncode == 0, docs.stderr
    serve = run_cli("serve", "--data-dir", str(tmp_path), env=bad_port)
    assert serve.returncode == 2 and "COMFYVN_PORT='eighty'" in serve.stderr
    too_big = run_cli("serve", "--data-dir", str(tmp_path), env={"COMFYVN_PORT": "70000"})
    assert too_big.returncode == 2 and "65535" in too_big.stderr
    flag = run_cli("serve", "--port", "70000", "--data-dir", str(tmp_path), env={})
    assert flag.returncode == 2 and "not a TCP port" in flag.stderr
    level = run_cli("serve", "--log-level", "LOUD", "--data-dir", str(tmp_path), env={})
    assert level.returncode == 2 and "--log-level" in level.stderr
    for result in (docs, serve, too_big, flag, level):
        assert "Traceback" not in result.stderr


def test_a_bad_plugin_budget_stops_serve_with_its_name(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        "--dev",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path),
        env={"COMFYVN_PLUGIN_CALL_BUDGET": "soon"},
    )
    assert result.returncode == 2
    assert "COMFYVN_PLUGIN_CALL_BUDGET='soon' is not a number" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_user_chosen_token_is_redacted_whole() -> None:
    """``Bearer <token>`` redaction stopped at the first ':' or '!' of a token set through
    COMFYVN_API_TOKEN, leaking the rest; the server registers its token as a secret."""
    token = "pass:word!with spaces-0123"
    register_secret(token)
    line = RedactingFormatter("%(message)s").format(
        logging.LogRecord("comfyvn", logging.INFO, __file__, 1, "headers: %s", (token,), None)
    )
    bearer = redact(f"Authorization: Bearer {token}")
    assert "word!with" not in line and "word!with" not in bearer
    assert "[redacted]" in line
