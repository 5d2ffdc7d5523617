"""Generic HTTP: ``config.health_path`` (default ``/``) with ``config.method`` (GET or HEAD);
up when the status is in ``config.accepted_status`` (default: any 2xx). A key, if set, goes in
``config.auth_header`` (default ``Authorization: Bearer <key>``)."""

from __future__ import annotations

from .base import Adapter, Outcome, http_failure

__all__ = ["HttpAdapter"]


class HttpAdapter(Adapter):
    kind = "http"
    key_help = (
        "Optional: sent in the key header ('Authorization: Bearer <key>' by default, or the "
        "bare key in the header you name)."
    )

    def headers(self) -> dict[str, str]:
        key = self.api_key
        if not key:
            return {}
        header = self.spec.config.get("auth_header", "Authorization")
        return {header: f"Bearer {key}" if header.lower() == "authorization" else key}

    async def health(self) -> Outcome:
        path = self.spec.config.get("health_path", "/")
        method = self.spec.config.get("method", "GET")
        accepted = self.spec.config.get("accepted_status")
        response = await self.client.request(method, self.url(path), headers=self.headers())
        code = response.status_code
        details = {
            "status_code": code,
            "path": path,
            "content_type": response.headers.get("content-type"),
        }
        ok = code in accepted if accepted else 200 <= code < 300
        if ok:
            return Outcome("green", "ok", f"HTTP {code} from {path}", details=details)
        failed = http_failure(response, path)
        if failed is None:  # a 2xx the user did not list as accepted
            wanted = ", ".join(str(c) for c in accepted or [])
            failed = Outcome(
                "red",
                "http_error",
                f"HTTP {code} from {path} is not an accepted status ({wanted})",
                error=f"HTTP {code} from {path}",
            )
        failed.details = {**details, **failed.details}
        return failed
