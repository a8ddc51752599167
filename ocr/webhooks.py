"""Webhooks: when a job submitted with a ``callback_url`` ends, POST its JSON there, signed, until it is taken.

- **Signed.** ``X-MyOCR-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with the owner's webhook
  secret (shown and rotatable on the API tokens page). A receiver recomputes it over the raw body and refuses a
  signature whose ``t`` is more than a few minutes old (a replay).
- **Never aimed inside.** A URL must be http(s) and every address its host resolves to must be public: loopback,
  private, link-local, multicast and reserved addresses are refused (unless ``OCR_WEBHOOK_ALLOW_PRIVATE``), at
  submit time and again at every attempt, and the request goes to the address that was checked (no second DNS
  lookup that a rebinding attack could answer differently); TLS still verifies the URL's host name.
- **Retried.** An attempt that fails (no answer within ``OCR_WEBHOOK_TIMEOUT_SECONDS``, or not 2xx) is tried again
  after ``OCR_WEBHOOK_RETRY_SECONDS`` × 2ⁿ (capped at an hour), up to ``OCR_WEBHOOK_MAX_ATTEMPTS`` attempts; every
  attempt is recorded (``WebhookAttempt``, visible in the admin). A receiver that never answers blocks nothing:
  deliveries run on their own tasks.
- **Once.** A delivery is one row per job end; an attempt claims it (``next_attempt_at`` moved on in the same
  update), so two processes never send the same attempt.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from asgiref.sync import sync_to_async
from django.db import transaction
from django.utils import timezone

from ocr.config import ocr_config
from ocr.errors import OcrError
from ocr.events import ErrorCode
from ocr.models import OcrJob, WebhookAttempt, WebhookDelivery, WebhookSecret

logger = logging.getLogger(__name__)

MAX_URL_LENGTH = 2000
SIGNATURE_HEADER = "X-MyOCR-Signature"
USER_AGENT = "MyOCR-Webhook/1"


class InvalidCallbackUrl(OcrError):
    status = 400
    code = ErrorCode.INVALID_CALLBACK_URL


# --- the owner's secret ---------------------------------------------------------------------------------------


def secret_for(owner: Any) -> str:
    """The owner's webhook secret, created on first use."""
    row, _created = WebhookSecret.objects.get_or_create(owner=owner, defaults={"secret": _new_secret()})
    return row.secret


def rotate_secret(owner: Any) -> str:
    """Replace the owner's webhook secret (deliveries from now on are signed with the new one)."""
    secret = _new_secret()
    WebhookSecret.objects.update_or_create(owner=owner, defaults={"secret": secret, "rotated_at": timezone.now()})
    return secret


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


# --- where a webhook may go -----------------------------------------------------------------------------------


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def check_url(url: str) -> str:
    """``url`` cleaned, or ``InvalidCallbackUrl``: only its shape, no DNS (see ``resolve``)."""
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidCallbackUrl(f"The callback URL is longer than {MAX_URL_LENGTH} characters.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidCallbackUrl("The callback URL must be an http:// or https:// URL with a host.")
    if parts.username or parts.password:
        raise InvalidCallbackUrl("The callback URL must not carry a user name or password.")
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        raise InvalidCallbackUrl("The callback URL has an invalid port.") from None
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, ""))


def resolve(url: str) -> list[str]:
    """The addresses the URL's host resolves to, all allowed, or ``InvalidCallbackUrl``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise InvalidCallbackUrl(f"The callback URL's host {host!r} does not resolve.") from None
    addresses = sorted({info[4][0] for info in infos})
    if not ocr_config().webhook_allow_private:
        refused = [address for address in addresses if not _public(ipaddress.ip_address(address.split("%")[0]))]
        if refused:
            raise InvalidCallbackUrl(
                "The callback URL points at a loopback, private or link-local address; webhooks only go to public "
                "addresses."
            )
    return addresses


def validate_callback_url(url: str) -> str:
    """The cleaned URL if a webhook may be sent there (blocking: DNS)."""
    cleaned = check_url(url)
    resolve(cleaned)
    return cleaned


# --- deliveries ---------------------------------------------------------------------------------------------


def _payload(job: OcrJob) -> bytes:
    from ocr.selectors import job_as_dict

    data = {"event": "job.finished", "job": job_as_dict(job, pages=list(job.pages.order_by("number")))}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def create_delivery(job_id: object) -> int | None:
    """Record the delivery of a just-ended job's webhook, if it asked for one; its id (``None``: none asked, or
    one exists already: a job ends once)."""
    job = OcrJob.objects.filter(pk=job_id).only("pk", "callback_url", "status", "finished_at").first()
    if job is None or not job.callback_url or not job.is_finished or job.finished_at is None:
        return None
    delivery, created = WebhookDelivery.objects.get_or_create(
        job_id=job.pk,
        job_finished_at=job.finished_at,
        defaults={"url": job.callback_url, "next_attempt_at": timezone.now()},
    )
    return delivery.pk if created else None


def delivery_summary(job_id: object) -> dict[str, Any] | None:
    """The latest webhook delivery of a job, for its owner (``GET /api/jobs/<id>``)."""
    delivery = WebhookDelivery.objects.filter(job_id=job_id).order_by("-created_at").first()
    if delivery is None:
        return None
    return {
        "url": delivery.url,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
    }


async def job_ended(job_id: object) -> None:
    """A detached job has ended (or may have: a duplicate call is harmless): send its webhook, if it asked for
    one, in the background of this process."""
    try:
        delivery_id = await sync_to_async(create_delivery)(job_id)
    except Exception:
        logger.exception("could not record the webhook of job %s", job_id)
        return
    if delivery_id is not None:
        deliver_in_background(delivery_id)


def _claim(delivery_id: int) -> tuple[WebhookDelivery, bytes, str] | None:
    """Take the next attempt of a pending delivery that is due: its row, the body and the owner's secret."""
    now = timezone.now()
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update()
            .filter(pk=delivery_id, state=WebhookDelivery.State.PENDING, next_attempt_at__lte=now)
            .select_related("job", "job__owner")
            .first()
        )
        if delivery is None:
            return None
        # Moved on before sending: a second process looking now finds it not due.
        delivery.next_attempt_at = now + timedelta(seconds=ocr_config().webhook_timeout_seconds * 3)
        delivery.save(update_fields=["next_attempt_at"])
        return delivery, _payload(delivery.job), secret_for(delivery.job.owner)


def _record(delivery: WebhookDelivery, *, status_code: int | None, error: str, duration_ms: int) -> float | None:
    """Record an attempt; returns the seconds until the next one, or ``None`` when the delivery is over."""
    now = timezone.now()
    ok = status_code is not None and 200 <= status_code < 300
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery=delivery, status_code=status_code, error=error[:500], duration_ms=duration_ms
        )
        attempts = delivery.attempts + 1
        fields: dict[str, Any] = {"attempts": attempts, "last_status_code": status_code, "last_error": error[:500]}
        delay: float | None = None
        if ok:
            fields.update(state=WebhookDelivery.State.DELIVERED, delivered_at=now)
        elif attempts >= ocr_config().webhook_max_attempts:
            fields.update(state=WebhookDelivery.State.FAILED)
        else:
            delay = min(3600.0, ocr_config().webhook_retry_seconds * 2 ** (attempts - 1))
            fields.update(next_attempt_at=now + timedelta(seconds=delay))
        WebhookDelivery.objects.filter(pk=delivery.pk).update(**fields)
    return delay


async def attempt(delivery_id: int) -> float | None:
    """Make the next attempt of a delivery if it is due; returns the seconds until the one after (``None``:
    delivered, given up, or not due here)."""
    claimed = await sync_to_async(_claim)(delivery_id)
    if claimed is None:
        return None
    delivery, body, secret = claimed
    started = time.monotonic()
    status_code: int | None = None
    error = ""
    try:
        addresses = await sync_to_async(resolve, thread_sensitive=False)(delivery.url)
        status_code = await _post(delivery.url, addresses[0], body, secret, delivery_id)
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except InvalidCallbackUrl as exc:
        error = exc.message
    except httpx.TimeoutException:
        error = f"no answer within {ocr_config().webhook_timeout_seconds:g} s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    duration_ms = int((time.monotonic() - started) * 1000)
    return await sync_to_async(_record)(delivery, status_code=status_code, error=error, duration_ms=duration_ms)


async def _post(url: str, address: str, body: bytes, secret: str, delivery_id: int) -> int:
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    timestamp = int(time.time())
    headers = {
        "Host": parts.netloc,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        "X-MyOCR-Event": "job.finished",
        "X-MyOCR-Delivery": str(delivery_id),
    }
    timeout = ocr_config().webhook_timeout_seconds
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        request = client.build_request("POST", pinned, content=body, headers=headers)
        if parts.scheme == "https":
            request.extensions["sni_hostname"] = host
        response = await client.send(request)
        await response.aclose()
        return response.status_code


# --- who runs the attempts -------------------------------------------------------------------------------------


async def deliver(delivery_id: int) -> None:
    """Run a delivery's attempts in this process until it is over (the job's runner calls this when it ends;
    recovery calls it for deliveries whose process went away)."""
    while True:
        delay = await attempt(delivery_id)
        if delay is None:
            return
        await asyncio.sleep(delay)  # the retry backoff


_tasks: set[asyncio.Task[None]] = set()


def deliver_in_background(delivery_id: int) -> None:
    task = asyncio.get_running_loop().create_task(
        deliver(delivery_id), name=f"ocr-webhook-{delivery_id}", context=contextvars.Context()
    )
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def overdue_deliveries() -> list[int]:
    """Pending deliveries whose next attempt is well overdue: their process went away (for recovery)."""
    cutoff = timezone.now() - timedelta(seconds=ocr_config().webhook_timeout_seconds * 3)
    return list(
        WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING, next_attempt_at__lt=cutoff).values_list(
            "pk", flat=True
        )[:100]
    )
