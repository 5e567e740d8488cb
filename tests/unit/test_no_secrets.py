"""No secret in the repository: every file git tracks or would add (ignored files aside) is scanned for private
keys, well-known token formats, credentials in URLs and secret-named settings given a literal value. The
scanner is proven on planted secrets, and the file that holds the compose stack's real secrets is ignored."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.pipeline import REPO

# Formats that are a secret wherever they appear.
TOKEN_FORMATS = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY( BLOCK)?-----"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),
    "Stripe live key": re.compile(r"\b[rs]k_live_[0-9A-Za-z]{20,}"),
    "JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
}
# A password inside a URL: the part between the user's colon and the at sign before the host.
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:([^\s@'\"/]+)@")
# A setting named like a secret, given a literal: `api_token = "..."`, `"password": "..."`, `SECRET=...` (.env).
SECRET_NAME = (
    r"[A-Za-z0-9_]*(?:PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|FERNET_?KEY|PRIVATE_?KEY|CREDENTIALS?)[A-Za-z0-9_]*"
)
QUOTED_ASSIGNMENT = re.compile(rf"(?i)\b({SECRET_NAME})[\"']?\s*[:=]\s*[\"']([^\"'\s]+)[\"']")
BARE_ASSIGNMENT = re.compile(rf"(?m)^\s*(?:export\s+)?({SECRET_NAME.upper()})\s*=\s*([\w+/=.:-]+)\s*$")
# Values that stand for a secret without being one: references to the environment or to a file, template
# slots, the obvious placeholders the example files use.
PLACEHOLDER = re.compile(r"(?i)^(\$|\{|<|%\(|\*+$|x{3,}|\.\.\.)|change-?me|example|placeholder|redacted|dummy|your[-_]")
# Names that contain a secret word without holding a secret: where the secret is, or what the secret is called.
NOT_A_SECRET_NAME = re.compile(r"(?i)_(FILE|PATH|DIR|URL|NAME|ENV|VAR|HEADER|PREFIX|WORDS|LENGTH|BYTES)$")
# Test-only constants under tests/ and bench/: throwaway values the tests and benchmarks give the services they
# start and stop themselves on temporary homes; none is the secret of any real deployment.
ALLOWED_IN_TESTS = {
    "web-test-token",  # tests/web/conftest.py: the inference API of the stack the browser tests start
    "engines-token",  # tests/e2e/test_engines.py: the service on the production engines
    "forged",  # tests/e2e/test_engines.py: the wrong Airflow token the Models page must refuse
    "faults-token",  # tests/e2e/test_faults.py
    "e2e-byod-token",  # tests/e2e/test_bring_your_own_data.py
    "e2e-deployment-token",  # tests/e2e/test_deployment.py
    "e2e-live-gate-token",  # tests/e2e/test_live_gate.py
    "e2e-monitoring-token",  # tests/e2e/test_monitoring_loop.py
    "test-token-0123456789",  # tests/support/serving_clients.py: the service of the serving tests
    "monitoring-test-token",  # tests/integration/test_monitoring.py
    "stack-test-token",  # tests/integration/test_stack.py: `flightplan up` of the MLflow UI and the service
    "secret",  # tests/unit/test_settings.py: a database URL whose rewriting is checked, for no real database
    "bench-token",  # bench/serve_bench.py: the service the benchmark starts on its own home
    # tests/unit/test_secure_defaults.py: the passwords `flightplan airflow-passwords` writes on a temporary home
    "admin:first-test-password ops:second-test-password",
    "admin:first-test-password",
}
ALLOWING_FOLDERS = ("tests", "bench")


def secrets_in(text: str) -> list[tuple[str, str]]:
    """What looks like a secret in ``text``: (kind, value) per finding."""
    found = [(kind, m[0]) for kind, pattern in TOKEN_FORMATS.items() for m in pattern.finditer(text)]
    found += [("password in a URL", m[1]) for m in URL_CREDENTIALS.finditer(text) if not is_placeholder(m[1])]
    for pattern in (QUOTED_ASSIGNMENT, BARE_ASSIGNMENT):
        for match in pattern.finditer(text):
            name, value = match[1], match[2]
            if len(value) >= 6 and not NOT_A_SECRET_NAME.search(name) and not is_placeholder(value):
                found.append((f"secret-named setting {name}", value))
    return found


def is_placeholder(value: str) -> bool:
    return bool(PLACEHOLDER.search(value))


def committable_files() -> list[Path]:
    """Every file git tracks, and every file it would add (not ignored): what a commit can carry."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [REPO / name for name in sorted(set(listed.split("\0"))) if name and (REPO / name).is_file()]


def scan(path: Path, allowed: set[str]) -> list[str]:
    """The findings in one file but the ``allowed`` values, each shortened (binary files, e.g. the screenshots,
    are read for the token formats only: any bytes may look like an assignment there)."""
    data = path.read_bytes()
    binary = b"\0" in data
    return [
        f"{kind}: {value[:4]}..."
        for kind, value in secrets_in(data.decode("utf-8", errors="replace"))
        if value not in allowed and not (binary and kind not in TOKEN_FORMATS)
    ]


def test_no_committable_file_holds_a_secret() -> None:
    files = committable_files()
    assert len(files) > 100 and REPO / "docker-compose.yaml" in files  # the listing is the repository's
    findings = {}
    for path in files:
        name = path.relative_to(REPO)
        if found := scan(path, ALLOWED_IN_TESTS if name.parts[0] in ALLOWING_FOLDERS else set()):
            findings[str(name)] = found
    assert not findings, findings


def test_the_scanner_finds_planted_secrets_and_passes_placeholders(tmp_path: Path) -> None:
    # Assembled at run time, so that this file holds none of them literally.
    planted = {
        "private key": "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEow...\n",
        "AWS access key id": "aws_id: AKIA" + "Q7W3E5R2T6Y8U1I4\n",
        "GitHub token": "GH = ghp" + "_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8\n",
        "Slack token": "hook: xox" + "b-1234567890-abcdefghij\n",
        "password in a URL": "DB = 'postgresql://app:" + "s3cr3tPa55@db:5432/app'\n",
        "secret-named setting": 'API_TOKEN = "' + 'q8Zr2LwX9vTn4Ke1"\n',
        "secret-named setting (.env)": "AIRFLOW_JWT_SECRET=" + "Zk3mP9qL2xW7vB4n\n",
    }
    for kind, text in planted.items():
        file = tmp_path / "planted.txt"
        file.write_text(f"# a harmless line\n{text}")
        found = scan(file, ALLOWED_IN_TESTS)
        assert len(found) == 1 and found[0].startswith(kind.split(" (")[0]), (kind, found)
    placeholders = (
        "POSTGRES_PASSWORD=change-me\n"
        'password: "${POSTGRES_PASSWORD}"\n'
        "url: postgresql+psycopg://flightplan:${POSTGRES_PASSWORD}@postgres/airflow\n"
        'PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"\n'
        "token = api_token(settings)\n"
    )
    file.write_text(placeholders)
    assert scan(file, set()) == []


def test_the_compose_secrets_file_is_never_committed() -> None:
    """`cp .env.example .env` puts the real secrets beside the tracked files: git must ignore it."""
    ignored = subprocess.run(["git", "check-ignore", "--quiet", ".env"], cwd=REPO, check=False)
    assert ignored.returncode == 0, ".env is not in .gitignore"
    template = subprocess.run(["git", "check-ignore", "--quiet", ".env.example"], cwd=REPO, check=False)
    assert template.returncode == 1  # the template itself stays tracked
