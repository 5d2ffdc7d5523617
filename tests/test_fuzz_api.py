"""API fuzzing with schemathesis against the real server's own OpenAPI schema, with the token.

Every operation gets generated requests (valid and invalid); none may answer 5xx or break its
documented response schema. `make test` runs a bounded number of examples; `make fuzz` more.
Operations that would reach out to URLs taken from generated data (provider health checks,
webhook pings) run with outbound traffic pinned to loopback by the server's own allow lists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from .support import ServerProcess

pytestmark = pytest.mark.fuzz

MAX_EXAMPLES = int(os.environ.get("COMFYVN_FUZZ_EXAMPLES", "15"))
# No 5xx, only documented status codes, and bodies that match the documented schemas. Not
# "positive data acceptance": routes validate more than a schema can say (a known hook name, a
# path inside the assets root), and refusing with a documented 4xx is the right answer there.
# Streams never end by design (tests/test_sse.py covers them).
ENDLESS = {"/api/modder/hooks/subscribe"}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("fuzz") / "data",
        env={
            # Outbound calls may only reach loopback, whatever URL the fuzzer invents.
            "COMFYVN_WEBHOOK_ALLOW_HOSTS": "127.0.0.1,localhost",
            "COMFYVN_PROVIDER_ALLOW_HOSTS": "127.0.0.1,localhost",
            "COMFYVN_PROVIDER_TIMEOUT": "0.5",
            "COMFYVN_WEBHOOK_TIMEOUT": "0.5",
        },
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_api_never_answers_5xx_or_breaks_its_schema(fuzz_server: ServerProcess) -> None:
    """One test over every operation (schemathesis' pytest plugin does not support pytest 9's
    fixtures yet, so the operations are driven through hypothesis directly)."""
    schema = schemathesis.openapi.from_url(
        f"{fuzz_server.url}/openapi.json", headers=fuzz_server.headers
    )
    schema.config.update(base_url=fuzz_server.url)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in ENDLESS:
            continue
        operations += 1
        started = time.monotonic()

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case) -> None:
            case.call_and_validate(headers=fuzz_server.headers, timeout=30, checks=CHECKS)

        try:
            check()
        except Exception as exc:  # collect every failing operation, then report them all
            failures.append(f"{operation.label}: {exc}")
        print(f"{operation.label}: {time.monotonic() - started:.1f}s")
    assert operations >= 10
    assert not failures, "\n\n".join(failures)
