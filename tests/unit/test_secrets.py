"""The compose stack's secrets: `flightplan check-secrets` refuses each kind of bad value, naming the variable (and
the Airflow user) but never the value, and accepts what `flightplan dotenv` generates from .env.example; that
file is written owner-only and never over an existing one unless told to."""

from __future__ import annotations

import base64
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from flightplan.cli import main
from flightplan.secrets import SECRETS, TOKENS, fresh_dotenv, secret_problems

from tests.support.pipeline import REPO
from tests.support.secrets import dotenv_values

EXAMPLE = (REPO / ".env.example").read_text()


def generated() -> dict[str, str]:
    return dotenv_values(fresh_dotenv(EXAMPLE))


def test_the_example_leaves_every_secret_empty() -> None:
    example = dotenv_values(EXAMPLE)
    assert {name: example.get(name) for name in SECRETS} == dict.fromkeys(SECRETS, "")
    assert [p.variable for p in secret_problems(example)] == list(SECRETS)


def test_a_generated_env_passes_the_checker_and_keeps_every_other_line() -> None:
    text = fresh_dotenv(EXAMPLE)
    values = dotenv_values(text)
    assert secret_problems(values) == []
    Fernet(values["AIRFLOW_FERNET_KEY"].encode())  # a key Airflow can use
    assert all(len(values[name]) >= 40 for name in (*TOKENS, "POSTGRES_PASSWORD"))
    example_lines, written_lines = EXAMPLE.splitlines(), text.splitlines()
    assert len(written_lines) == len(example_lines)
    for before, after in zip(example_lines, written_lines, strict=True):
        name = before.split("=", 1)[0]
        if name in SECRETS:
            assert after.startswith(f"{name}=") and after != before, name
        else:
            assert after == before
    again = generated()
    assert all(again[name] != values[name] for name in SECRETS)  # fresh each time, never a fixed value


def test_every_airflow_user_gets_a_password_of_its_own() -> None:
    example = EXAMPLE.replace("AIRFLOW_USERS=admin:admin", "AIRFLOW_USERS=admin:admin, ops:viewer,audit:viewer")
    assert example != EXAMPLE
    values = dotenv_values(fresh_dotenv(example))
    passwords = dict(pair.split(":", 1) for pair in values["AIRFLOW_PASSWORDS"].split())
    assert sorted(passwords) == ["admin", "audit", "ops"]
    assert len(set(passwords.values())) == 3 and all(len(p) >= 40 for p in passwords.values())
    assert secret_problems(values) == []


def test_a_secret_missing_from_the_template_is_still_generated() -> None:
    without = "\n".join(line for line in EXAMPLE.splitlines() if not line.startswith("FLIGHTPLAN_ADMIN_TOKEN="))
    values = dotenv_values(fresh_dotenv(without))
    assert len(values["FLIGHTPLAN_ADMIN_TOKEN"]) >= 40 and secret_problems(values) == []


def _token() -> str:
    return secrets.token_urlsafe(32)


# (variable, a bad value made from a good environment, what the message must say). Built at run time: the values
# are the kinds a person would type or copy, none a secret of anything.
BAD_VALUES: list[tuple[str, Callable[[dict[str, str]], str], str]] = [
    ("AIRFLOW_JWT_SECRET", lambda good: "", "empty"),
    ("FLIGHTPLAN_API_TOKEN", lambda good: "change-me-to-the-inference-api-token", "placeholder"),
    ("FLIGHTPLAN_FEEDBACK_TOKEN", lambda good: "Change_Me" + _token(), "placeholder"),
    ("POSTGRES_PASSWORD", lambda good: "password", "placeholder"),
    ("AIRFLOW_API_SECRET_KEY", lambda good: "an-example-" + _token(), "placeholder"),
    ("FLIGHTPLAN_ADMIN_TOKEN", lambda good: _token()[:31], "31 characters, at least 32 expected"),
    ("POSTGRES_PASSWORD", lambda good: _token()[:15], "15 characters, at least 16 expected"),
    ("FLIGHTPLAN_API_TOKEN", lambda good: "ab1" * 20, "repeated pattern"),
    ("POSTGRES_PASSWORD", lambda good: _token()[:20] + "@db/x", "database URLs"),
    ("AIRFLOW_FERNET_KEY", lambda good: _token(), "not a Fernet key"),  # 32 bytes, but without base64's padding
    ("AIRFLOW_FERNET_KEY", lambda good: base64.urlsafe_b64encode(secrets.token_bytes(24)).decode(), "not a Fernet"),
    ("AIRFLOW_FERNET_KEY", lambda good: base64.urlsafe_b64encode(bytes(32)).decode(), "repeated pattern"),
    ("AIRFLOW_PASSWORDS", lambda good: "", "empty"),
    ("AIRFLOW_PASSWORDS", lambda good: "someone:" + _token(), "no password for the Airflow user(s) ['admin']"),
    ("AIRFLOW_PASSWORDS", lambda good: "admin:", "no password for the Airflow user(s) ['admin']"),
    ("AIRFLOW_PASSWORDS", lambda good: "admin:" + _token()[:12], "Airflow user 'admin' is 12 characters"),
    ("AIRFLOW_PASSWORDS", lambda good: "admin:changeme-" + _token(), "Airflow user 'admin' is a placeholder"),
    ("FLIGHTPLAN_ADMIN_TOKEN", lambda good: good["FLIGHTPLAN_API_TOKEN"], "the value of FLIGHTPLAN_API_TOKEN"),
    ("AIRFLOW_API_SECRET_KEY", lambda good: good["AIRFLOW_JWT_SECRET"], "the value of AIRFLOW_JWT_SECRET"),
    (
        "AIRFLOW_PASSWORDS",
        lambda good: "admin:" + good["POSTGRES_PASSWORD"],
        "the password of Airflow user 'admin' is the value of POSTGRES_PASSWORD",
    ),
]


@pytest.mark.parametrize(("variable", "make_bad", "expected"), BAD_VALUES)
def test_each_kind_of_bad_value_is_refused_naming_the_variable_never_the_value(
    variable: str, make_bad: Callable[[dict[str, str]], str], expected: str
) -> None:
    good = generated()
    bad = make_bad(good)
    problems = secret_problems({**good, variable: bad})
    assert [p.variable for p in problems] == [variable], problems
    message = str(problems[0])
    assert message.startswith(f"{variable}: ") and expected in message, message
    secret_part = bad.split(":", 1)[1] if variable == "AIRFLOW_PASSWORDS" and ":" in bad else bad
    if secret_part:
        assert secret_part not in message, message


def test_a_password_is_needed_for_every_user_of_airflow_users() -> None:
    good = generated()
    with_ops = {**good, "AIRFLOW_USERS": "admin:admin,ops:viewer"}
    problems = secret_problems(with_ops)
    assert [str(p) for p in problems] == [
        "AIRFLOW_PASSWORDS: no password for the Airflow user(s) ['ops']: user:password pairs separated by spaces "
        "expected"
    ]
    with_ops["AIRFLOW_PASSWORDS"] += f" ops:{_token()}"
    assert secret_problems(with_ops) == []
    with_ops["AIRFLOW_PASSWORDS"] += f" audit:{_token()[:3]}"  # not a user of AIRFLOW_USERS: never read
    assert secret_problems(with_ops) == []


def test_two_users_sharing_a_password_are_refused() -> None:
    good = generated()
    shared = _token()
    users = {"AIRFLOW_USERS": "admin:admin,ops:viewer", "AIRFLOW_PASSWORDS": f"admin:{shared} ops:{shared}"}
    problems = secret_problems({**good, **users})
    assert [str(p) for p in problems] == [
        "AIRFLOW_PASSWORDS: the password of Airflow user 'ops' is the value of the password of Airflow user 'admin': "
        "each secret needs a value of its own"
    ]


def test_check_secrets_exits_1_naming_each_refused_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good = generated()
    for name, value in good.items():
        monkeypatch.setenv(name, value)
    assert main(["check-secrets"]) == 0
    assert capsys.readouterr().err == ""
    short = _token()[:20]
    monkeypatch.setenv("AIRFLOW_JWT_SECRET", short)
    monkeypatch.delenv("FLIGHTPLAN_FEEDBACK_TOKEN")
    assert main(["check-secrets"]) == 1
    refused = capsys.readouterr().err
    assert "refused: AIRFLOW_JWT_SECRET: 20 characters" in refused
    assert "refused: FLIGHTPLAN_FEEDBACK_TOKEN: empty" in refused
    assert short not in refused and "make dotenv" in refused
    assert not any(good[name] in refused for name in SECRETS)


def test_dotenv_writes_owner_only_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / ".env"
    example = ["--example", str(REPO / ".env.example"), "--output", str(output)]
    assert main(["dotenv", *example]) == 0
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    first = output.read_text()
    assert secret_problems(dotenv_values(first)) == []
    capsys.readouterr()

    assert main(["dotenv", *example]) == 1
    assert f"{output} exists: pass --force" in capsys.readouterr().err
    assert output.read_text() == first

    output.chmod(0o644)
    assert main(["dotenv", *example, "--force"]) == 0
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    replaced = dotenv_values(output.read_text())
    assert (
        secret_problems(replaced) == [] and replaced["AIRFLOW_JWT_SECRET"] != dotenv_values(first)["AIRFLOW_JWT_SECRET"]
    )


def test_dotenv_names_a_missing_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.example"
    assert main(["dotenv", "--example", str(missing), "--output", str(tmp_path / ".env")]) == 1
    assert str(missing) in capsys.readouterr().err and not (tmp_path / ".env").exists()
