"""The compose stack's secrets: which values of its environment are refused, and a fresh `.env` written from
`.env.example`. The compose file refuses an empty secret by itself; this checks what it cannot: placeholders,
short values, an invalid Fernet key, an Airflow user without a good password, one value given to two secrets.
A message names the variable (and the Airflow user), never the value: it ends up in `docker compose logs`."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet

from flightplan.settings import TOKEN_VARIABLES

# Read by the services as signing keys or bearer tokens: as long as `secrets.token_urlsafe(32)` makes them.
TOKENS = ("AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", *TOKEN_VARIABLES.values())
# The names of the variables (the secrets are their values).
DATABASE_PASSWORD_VAR = "POSTGRES_PASSWORD"
FERNET_KEY_VAR = "AIRFLOW_FERNET_KEY"
USER_PASSWORDS_VAR = "AIRFLOW_PASSWORDS"  # user:password pairs separated by spaces
USERS_VAR = "AIRFLOW_USERS"  # user:role pairs separated by commas
DEFAULT_USERS = "admin:admin"  # what the compose file gives Airflow when AIRFLOW_USERS is unset
SECRETS = (DATABASE_PASSWORD_VAR, FERNET_KEY_VAR, *TOKENS, USER_PASSWORDS_VAR)

TOKEN_MIN_LENGTH = 32
PASSWORD_MIN_LENGTH = 16
# Fewer distinct characters than this is a typed pattern ("aaaa...", "abab..."), not a random value.
MIN_DISTINCT_CHARACTERS = 8
# Words that mark a value copied from an example: long enough that a random value never contains one by chance.
PLACEHOLDER_WORDS = ("change-me", "change_me", "changeme", "replace-me", "replaceme", "example", "placeholder")
# Values that are placeholders when they are the whole value.
PLACEHOLDER_VALUES = {"password", "secret", "token", "admin", "airflow", "postgres", "flightplan", "changeit"}
# The database password is written into connection URLs unescaped: any other character would break them.
URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")


@dataclass(frozen=True)
class SecretProblem:
    """What is wrong with one variable, worded without its value."""

    variable: str
    expected: str

    def __str__(self) -> str:
        return f"{self.variable}: {self.expected}"


def secret_problems(environment: Mapping[str, str]) -> list[SecretProblem]:
    """One problem per refused variable of ``environment`` (the compose stack's secrets); none when all are good."""
    problems = {name: problem for name in SECRETS if (problem := _value_problem(name, environment))}
    problems |= {name: problem for name, problem in _reuse_problems(environment).items() if name not in problems}
    return [SecretProblem(name, problems[name]) for name in SECRETS if name in problems]


def _value_problem(name: str, environment: Mapping[str, str]) -> str | None:
    value = environment.get(name, "")
    if name == USER_PASSWORDS_VAR:
        return _user_passwords_problem(value, airflow_users(environment.get(USERS_VAR, "")))
    if name == FERNET_KEY_VAR:
        return _unset_problem(value) or _fernet_key_problem(value) or _pattern_problem(value)
    if name == DATABASE_PASSWORD_VAR:
        return _weak_value_problem(value, PASSWORD_MIN_LENGTH) or _url_problem(value)
    return _weak_value_problem(value, TOKEN_MIN_LENGTH)


def _weak_value_problem(value: str, min_length: int) -> str | None:
    return _unset_problem(value) or _length_problem(value, min_length) or _pattern_problem(value)


def _unset_problem(value: str) -> str | None:
    """Empty, or a placeholder left from an example."""
    if not value:
        return "empty; `make dotenv` generates a .env with fresh secrets"
    lowered = value.lower()
    if lowered in PLACEHOLDER_VALUES or any(word in lowered for word in PLACEHOLDER_WORDS):
        return "a placeholder, not a secret; `make dotenv` generates a .env with fresh secrets"
    return None


def _length_problem(value: str, min_length: int) -> str | None:
    if len(value) < min_length:
        return f"{len(value)} characters, at least {min_length} expected"
    return None


def _pattern_problem(value: str) -> str | None:
    if len(set(value)) < MIN_DISTINCT_CHARACTERS:
        return f"a repeated pattern, a random value of at least {MIN_DISTINCT_CHARACTERS} distinct characters expected"
    return None


def _fernet_key_problem(value: str) -> str | None:
    try:
        Fernet(value.encode())
    except ValueError:  # the library's message is about the key's encoding; nothing of the value is needed here
        return "not a Fernet key: the URL-safe base64 encoding of 32 random bytes expected"
    return None


def _url_problem(value: str) -> str | None:
    if URL_SAFE.fullmatch(value):
        return None
    return "characters other than letters, digits and . _ ~ - (it is written into database URLs as it is)"


def _user_passwords_problem(value: str, users: list[str]) -> str | None:
    if not value:
        return "empty; `make dotenv` generates a .env with a password for each user of AIRFLOW_USERS"
    passwords = user_passwords(value)
    missing = [user for user in users if not passwords.get(user)]
    if missing:
        return f"no password for the Airflow user(s) {missing}: user:password pairs separated by spaces expected"
    for user in users:
        if problem := _weak_value_problem(passwords[user], PASSWORD_MIN_LENGTH):
            return f"the password of Airflow user '{user}' is {problem}"
    return None


def _reuse_problems(environment: Mapping[str, str]) -> dict[str, str]:
    """The same value given to two secrets: one leaked would open both. The later variable carries the problem."""
    first_holder: dict[str, str] = {}
    problems: dict[str, str] = {}
    for name, holder, value in _secret_values(environment):
        if value in first_holder:
            which = "the value" if holder == name else f"{holder} is the value"
            problems.setdefault(name, f"{which} of {first_holder[value]}: each secret needs a value of its own")
        first_holder.setdefault(value, holder)
    return problems


def _secret_values(environment: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(variable, holder, value) of every secret given a value; each Airflow user's password is a secret of its
    own, its holder worded as "the password of Airflow user '<user>'"."""
    found = [(name, name, environment.get(name, "")) for name in SECRETS if name != USER_PASSWORDS_VAR]
    passwords = user_passwords(environment.get(USER_PASSWORDS_VAR, ""))
    found += [(USER_PASSWORDS_VAR, f"the password of Airflow user '{user}'", p) for user, p in passwords.items()]
    return [(name, holder, value) for name, holder, value in found if value]


def airflow_users(configured: str) -> list[str]:
    """The user names of AIRFLOW_USERS (user:role pairs separated by commas), the compose default when empty."""
    return user_names(configured.strip() or DEFAULT_USERS)


def user_names(configured: str) -> list[str]:
    """The user names of ``user:role`` pairs separated by commas (Airflow's simple auth manager users)."""
    return [user for user in (entry.split(":", 1)[0].strip() for entry in configured.split(",")) if user]


def user_passwords(pairs: str) -> dict[str, str]:
    """AIRFLOW_PASSWORDS (user:password pairs separated by spaces) as user -> password."""
    return dict(pair.split(":", 1) for pair in pairs.split() if ":" in pair)


def fresh_dotenv(example: str) -> str:
    """The text of a `.env` from ``example`` (`.env.example`'s text): each secret's line given a fresh value, a
    secret the example lacks appended, every other line kept as it is."""
    lines = example.splitlines()
    settings = {name: value for name, value in map(_assignment, lines) if name}
    values = _fresh_secrets(airflow_users(settings.get(USERS_VAR, "")))
    written = [_with_fresh_value(line, values) for line in lines]
    written += [f"{name}={values[name]}" for name in SECRETS if name not in settings]
    return "\n".join(written) + "\n"


def _fresh_secrets(users: list[str]) -> dict[str, str]:
    values = {name: secrets.token_urlsafe(32) for name in (DATABASE_PASSWORD_VAR, *TOKENS)}
    values[FERNET_KEY_VAR] = Fernet.generate_key().decode()
    values[USER_PASSWORDS_VAR] = " ".join(f"{user}:{secrets.token_urlsafe(32)}" for user in users)
    return values


def _assignment(line: str) -> tuple[str, str]:
    """(name, value) of a `NAME=value` line; ("", "") for a comment or a blank line."""
    name, equals, value = line.partition("=")
    if not equals or line.lstrip().startswith("#"):
        return "", ""
    return name.strip(), value.strip()


def _with_fresh_value(line: str, values: Mapping[str, str]) -> str:
    name, _ = _assignment(line)
    return f"{name}={values[name]}" if name in SECRETS else line


def write_owner_only(path: Path, text: str, *, replace: bool = False) -> None:
    """Writes ``text`` readable by its owner only from the start (no moment when others could read it); an existing
    file raises FileExistsError unless ``replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: a link planted where the file goes would otherwise send the secrets to its target.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if replace else os.O_EXCL)
    descriptor = os.open(path, flags, 0o600)
    os.fchmod(descriptor, 0o600)  # a replaced file keeps its earlier mode otherwise, before the secrets go in
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
