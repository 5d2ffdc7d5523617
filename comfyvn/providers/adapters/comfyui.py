"""ComfyUI: ``GET /system_stats`` (system + devices with VRAM) and ``GET /queue``
(``queue_running`` / ``queue_pending`` lists). VRAM and queue length are its quota-like fields."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from .base import Adapter, AdapterError, Outcome, combine, describe_exception, http_failure

__all__ = ["ComfyUIAdapter"]

GIB = 1024**3


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AdapterError("bad_response", "/system_stats device VRAM fields are not numbers")
    return float(value)


class ComfyUIAdapter(Adapter):
    kind = "comfyui"
    supports_quota = True
    key_help = (
        "Optional: only for a ComfyUI behind an authenticating proxy; sent as "
        "'Authorization: Bearer <key>'."
    )

    async def health(self) -> Outcome:
        stats_resp, queue_resp = await asyncio.gather(
            self.client.get(self.url("/system_stats"), headers=self.headers()),
            self.client.get(self.url("/queue"), headers=self.headers()),
            return_exceptions=True,
        )
        if isinstance(stats_resp, BaseException):
            raise stats_resp
        failed = http_failure(stats_resp, "/system_stats")
        if failed is not None:
            return failed
        system, devices = self._parse_stats(self.json_of(stats_resp, "/system_stats"))
        details: dict[str, Any] = {
            "comfyui_version": system.get("comfyui_version"),
            "python_version": system.get("python_version"),
            "pytorch_version": system.get("pytorch_version"),
            "os": system.get("os"),
            "devices": devices,
        }
        findings: list[Outcome] = []
        queue = self._queue(queue_resp, findings)
        quota = self._quota(devices, queue)
        details.update(queue or {})
        thr = self.thresholds
        if queue is not None and queue["queue_pending"] >= thr.queue_amber:
            findings.append(
                Outcome(
                    "amber",
                    "queue_long",
                    f"queue is long: {queue['queue_pending']} pending (amber at {thr.queue_amber})",
                )
            )
        for dev in devices:
            ratio = dev["vram_free_ratio"]
            if ratio is not None and ratio < thr.vram_free_amber_ratio:
                findings.append(
                    Outcome(
                        "amber",
                        "vram_low",
                        f"VRAM nearly full on {dev['name']}: {ratio:.0%} free "
                        f"(amber under {thr.vram_free_amber_ratio:.0%})",
                    )
                )
        version = system.get("comfyui_version") or "?"
        base = Outcome(
            "green",
            "ok",
            f"ComfyUI {version} up: {len(devices)} device(s), {quota['summary']}",
            details=details,
            quota=quota,
            raw={
                "system_stats": {"system": _public_system(system), "devices": devices},
                **({"queue": queue} if queue else {}),
            },
        )
        return combine(findings, base)

    @staticmethod
    def _parse_stats(body: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if not isinstance(body, dict) or not isinstance(body.get("devices"), list):
            raise AdapterError(
                "bad_response", "/system_stats is not ComfyUI's shape (no 'devices' list)"
            )
        system = body.get("system") if isinstance(body.get("system"), dict) else {}
        devices = []
        for raw in body["devices"]:
            if not isinstance(raw, dict):
                raise AdapterError("bad_response", "/system_stats 'devices' holds a non-object")
            total = _num(raw.get("vram_total", 0))
            free = _num(raw.get("vram_free", 0))
            devices.append(
                {
                    "name": str(raw.get("name", "?")),
                    "type": str(raw.get("type", "?")),
                    "index": raw.get("index"),
                    "vram_total": total,
                    "vram_free": free,
                    "vram_free_ratio": round(free / total, 4) if total > 0 else None,
                }
            )
        return system, devices

    def _queue(self, resp: httpx.Response | BaseException, findings: list[Outcome]) -> Any:
        """Queue counts, or ``None`` with an amber "degraded" finding when /queue fails."""
        if isinstance(resp, BaseException):
            failed = describe_exception(resp, self.spec.base_url, self.timeout_s)
            findings.append(Outcome("amber", "degraded", f"/queue failed: {failed.reason}"))
            return None
        failed = http_failure(resp, "/queue")
        if failed is not None:
            findings.append(Outcome("amber", "degraded", f"/queue failed: {failed.reason}"))
            return None
        try:
            body = self.json_of(resp, "/queue")
            running, pending = body["queue_running"], body["queue_pending"]
            if not isinstance(running, list) or not isinstance(pending, list):
                raise TypeError
        except (AdapterError, KeyError, TypeError):
            findings.append(
                Outcome(
                    "amber", "degraded", "/queue is not ComfyUI's shape (queue_running/pending)"
                )
            )
            return None
        return {"queue_running": len(running), "queue_pending": len(pending)}

    def _quota(self, devices: list[dict[str, Any]], queue: dict[str, int] | None) -> dict[str, Any]:
        total = sum(d["vram_total"] for d in devices)
        free = sum(d["vram_free"] for d in devices)
        ratios = [d["vram_free_ratio"] for d in devices if d["vram_free_ratio"] is not None]
        parts = []
        if queue is not None:
            parts.append(
                f"queue {queue['queue_running']} running / {queue['queue_pending']} pending"
            )
        if total > 0:
            parts.append(f"VRAM {free / GIB:.1f}/{total / GIB:.1f} GiB free")
        return {
            "summary": ", ".join(parts) or "no devices reported",
            "queue_running": queue["queue_running"] if queue else None,
            "queue_pending": queue["queue_pending"] if queue else None,
            "queue_amber": self.thresholds.queue_amber,
            "vram_total": total,
            "vram_free": free,
            "vram_free_ratio": min(ratios) if ratios else None,
            "devices": len(devices),
        }


def _public_system(system: dict[str, Any]) -> dict[str, Any]:
    """Drop ``argv``: a command line is the one place a launcher might have put a token."""
    return {k: v for k, v in system.items() if k != "argv"}
