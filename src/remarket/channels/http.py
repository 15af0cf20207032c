"""HTTP providers: SMS (Twilio Messages API), push (FCM HTTP v1), signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx

from remarket.channels.providers import Envelope, SendFailed, http_failure

__all__ = ["FcmPushProvider", "HttpProvider", "TwilioSmsProvider", "WebhookProvider", "sign_body"]


class HttpProvider:
    """Shared plumbing: one connection pool, errors mapped to retryable or permanent."""

    channel = ""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self._client = httpx.AsyncClient(timeout=timeout)

    async def _post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self._request("POST", url, **kwargs)

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 300:
            raise http_failure(response.status_code, response.text)
        return response

    async def aclose(self) -> None:
        await self._client.aclose()


class TwilioSmsProvider(HttpProvider):
    """``POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json``, form-encoded
    ``To``, ``From``, ``Body``, HTTP Basic ``AccountSid:AuthToken`` (Twilio's documented
    request; ``base_url`` lets a Twilio-compatible provider or a test server stand in)."""

    channel = "sms"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        sender: str,
        base_url: str = "https://api.twilio.com",
        timeout: float = 30.0,
    ) -> None:
        super().__init__(timeout=timeout)
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._auth = (account_sid, auth_token)
        self._sender = sender

    async def send(self, envelope: Envelope) -> None:
        if envelope.content is None:
            raise ValueError("an SMS envelope needs rendered content")
        await self._post(
            self._url,
            data={"To": envelope.to, "From": self._sender, "Body": envelope.content.text},
            auth=self._auth,
        )


class FcmPushProvider(HttpProvider):
    """``POST {base_url}/v1/projects/{project_id}/messages:send`` with an OAuth 2 Bearer
    token and ``{"message": {"token", "notification": {"title", "body"}, "data"}}``
    (FCM HTTP v1). The access token is a credential; minting it from a service account
    is left to the operator."""

    channel = "push"

    def __init__(
        self,
        *,
        project_id: str,
        access_token: str,
        base_url: str = "https://fcm.googleapis.com",
        timeout: float = 30.0,
    ) -> None:
        super().__init__(timeout=timeout)
        self._url = f"{base_url.rstrip('/')}/v1/projects/{project_id}/messages:send"
        self._headers = {"Authorization": f"Bearer {access_token}"}

    async def send(self, envelope: Envelope) -> None:
        if envelope.content is None:
            raise ValueError("a push envelope needs rendered content")
        # FCM's data values must be strings.
        data = {str(k): str(v) for k, v in envelope.data.items()}
        message: dict[str, Any] = {
            "token": envelope.to,
            "notification": {
                "title": envelope.content.subject or "",
                "body": envelope.content.text,
            },
        }
        if data:
            message["data"] = data
        await self._post(self._url, json={"message": message}, headers=self._headers)


def sign_body(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256 over ``"<timestamp>.<body>"`` (the timestamp is
    signed too, so a receiver can refuse old replays).

    >>> sign_body("s", "1700000000", b"{}")[:15]
    'sha256=e9232c99'
    """
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


class WebhookProvider(HttpProvider):
    """POSTs a JSON body to ``url`` with ``X-Remarket-Signature`` (see :func:`sign_body`),
    ``X-Remarket-Timestamp`` and ``Idempotency-Key`` so the receiver can drop repeats."""

    channel = "webhook"

    def __init__(self, *, url: str, secret: str, timeout: float = 30.0) -> None:
        super().__init__(timeout=timeout)
        self._url = url
        self._secret = secret

    async def send(self, envelope: Envelope) -> None:
        body = json.dumps(
            {"id": envelope.key, "profile_id": envelope.profile_id, "data": envelope.data},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": envelope.key,
            "X-Remarket-Timestamp": timestamp,
            "X-Remarket-Signature": sign_body(self._secret, timestamp, body),
        }
        await self._post(self._url, content=body, headers=headers)
