"""API fuzzing with schemathesis against the real server's own OpenAPI schema, with the token.

Every operation gets generated requests (valid and invalid); none may answer 5xx or break its
documented response schema. `make test` runs a bounded number of examples; `make fuzz` more.
Operations that would reach out to URLs taken from generated data (provider health checks,
webhook pings) run with outbound traffic pinned to loopback by the server's own allow lists.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


# -- adversarial JSON on every operation that reads a body ----------------------------------
PLACEHOLDER = "\x00hostile\x00"
HOSTILE_FRAGMENTS = st.one_of(
    st.integers(65, 50_000).map(lambda n: "[" * n + "]" * n),  # depth
    st.integers(64, 2_000).map(lambda n: '{"a":' * n + "0" + "}" * n),
    st.integers(65, 6_000).map(lambda n: "-" * (n % 2) + "9" * n),  # digits
    st.integers(1, 400).map(lambda n: "1" + "0" * (308 + n) + ".5"),  # float overflow
    st.integers(0xD800, 0xDFFF).map(lambda n: f'"a\\u{n:04x}b"'),  # lone surrogates
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]),
)


def _with_hostile(body: object, key: str | None, fragment: str) -> bytes:
    """The body as JSON with ``fragment`` (raw JSON text) at ``key``, or as the whole body."""
    wrapped = {**body, key: PLACEHOLDER} if isinstance(body, dict) and key else PLACEHOLDER
    text = json.dumps(wrapped).replace(json.dumps(PLACEHOLDER), fragment, 1)
    return text.encode("utf-8", "surrogatepass")


def test_api_refuses_adversarial_json_on_every_operation(fuzz_server: ServerProcess) -> None:
    """Depth, digits, float overflow, lone surrogates and NaN at a random field of a generated
    body: never a 5xx, never a 2xx, never an unhandled exception in the server log."""
    schema = schemathesis.openapi.from_url(
        f"{fuzz_server.url}/openapi.json", headers=fuzz_server.headers
    )
    failures: list[str] = []
    operations = 0
    with httpx.Client(base_url=fuzz_server.url, headers=fuzz_server.headers, timeout=30) as http:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path in ENDLESS or not any(
                body.media_type == "application/json" for body in operation.body
            ):
                continue
            operations += 1

            check = _adversarial_check(http, operation)
            try:
                check()
            except Exception as exc:
                failures.append(f"{operation.label}: {exc}")
    assert operations >= 8
    assert not failures, "\n\n".join(failures)
    log = fuzz_server.log_text()
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log[-4000:]


def _reads_body(operation) -> bool:
    """Operations whose body is optional and may be ignored (a ping, a reload) can succeed."""
    return operation.method.upper() in ("POST", "PUT", "PATCH") and not operation.path.endswith(
        ("/ping", "/reload", "/redeliver", "/rotate-secret")
    )


def _adversarial_check(http: httpx.Client, operation) -> Callable[[], None]:
    reads_body = _reads_body(operation)

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(media_type="application/json"),
        fragment=HOSTILE_FRAGMENTS,
        field=st.one_of(st.none(), st.text(min_size=1, max_size=12)),
        pick=st.integers(0, 1000),
    )
    def check(case, fragment: str, field: str | None, pick: int) -> None:
        body = case.body
        if isinstance(body, dict) and body and field is None:
            field = sorted(body)[pick % len(body)]  # replace an existing field
        response = http.request(
            case.method,
            case.formatted_path,
            params=case.query,
            content=_with_hostile(body, field, fragment),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
        if reads_body:
            assert not 200 <= response.status_code < 300, f"accepted: {response.text[:300]}"

    return check
