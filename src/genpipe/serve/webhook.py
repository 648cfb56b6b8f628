"""MLflow's webhook for an alias (MLflow 3.3+, a server with a SQL store): registered by
`genpipe serve` with a secret of its own, verified on each post, removed when it stops.

MLflow signs a post as `v1,<base64 HMAC-SHA256 of "<delivery id>.<timestamp>.<body>">` with
the webhook's secret, in X-MLflow-Signature, beside X-MLflow-Timestamp (Unix seconds) and
X-MLflow-Delivery-Id. A post is taken when it is signed with the secret, its timestamp is
within TOLERANCE_S of now, and its delivery id has not been seen: anything else is refused
with one line and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("genpipe.serve")

SIGNATURE = "x-mlflow-signature"
TIMESTAMP = "x-mlflow-timestamp"
DELIVERY = "x-mlflow-delivery-id"
VERSION = "v1"
TOLERANCE_S = 300  # a post's timestamp may be this far from now, either way
SEEN = 4096  # delivery ids remembered against replays (older ones are outside the tolerance)
EVENTS = ["model_version_alias.created", "model_version_alias.deleted"]


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The signature MLflow sends for this post (mlflow.webhooks.delivery's own recipe)."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return f"{VERSION},{base64.b64encode(digest).decode()}"


class Verifier:
    """Checks posts against one secret; remembers the delivery ids it took."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret or secrets.token_urlsafe(32)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def refusal(self, headers: Mapping[str, str], body: bytes, at: float | None = None
                ) -> str | None:  # fmt: skip
        """Why this post is refused, in one line; None when it is taken."""
        signature = headers.get(SIGNATURE)
        timestamp = headers.get(TIMESTAMP, "")
        delivery = headers.get(DELIVERY, "")
        if not signature:
            return "expected an X-MLflow-Signature header; found none"
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12) or (
                not delivery):  # fmt: skip
            return "expected X-MLflow-Timestamp (Unix seconds) and X-MLflow-Delivery-Id headers"
        age = (time.time() if at is None else at) - int(timestamp)
        if abs(age) > TOLERANCE_S:
            return (f"expected a timestamp within {TOLERANCE_S} s of now; found one "
                    f"{abs(age):.0f} s {'old' if age > 0 else 'ahead'}")  # fmt: skip
        expected = sign(self.secret, delivery, timestamp, body).encode()
        if not hmac.compare_digest(signature.encode("utf-8", "replace"), expected):
            return "the signature does not match this server's secret"
        with self._lock:
            if delivery in self._seen:
                return f"delivery {delivery} was taken already (a replay)"
            self._seen[delivery] = None
            while len(self._seen) > SEEN:
                self._seen.popitem(last=False)
        return None


def name_of(model: str, alias: str, url: str) -> str:
    """The webhook's name: one per served model, alias and address (MLflow: at most 63
    letters, digits, '.', '_', '-'), so a server started again replaces its own."""
    digest = hashlib.sha256(f"{model}\n{alias}\n{url}".encode()).hexdigest()[:12]
    return f"genpipe-serve-{digest}"


def register(client: Any, model: str, alias: str, url: str, verifier: Verifier) -> Any:
    """The webhook for `model`'s alias moves, posting to `url`, after removing an earlier one
    of the same name (a server that was killed). Raises MLflow's error when the store has no
    webhooks (a file store) or refuses the URL."""
    name = name_of(model, alias, url)
    unregister(client, name)
    return client.create_webhook(name=name, url=url, events=EVENTS, secret=verifier.secret,
                                 description=f"genpipe serve: {model}@{alias} at {url}")


def unregister(client: Any, name: str) -> None:
    """Delete the webhooks named `name`."""
    token = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        for webhook in page:
            if webhook.name == name:
                client.delete_webhook(webhook.webhook_id)
        token = page.token
        if not token:
            return


def reaches(client: Any, webhook: Any) -> str | None:
    """None when the MLflow server's test post reached this server and was taken; else
    why not, in one line."""
    result = client.test_webhook(webhook.webhook_id)
    if result.success:
        return None
    if result.error_message:
        return " ".join(result.error_message.split())[:300]
    return f"HTTP {result.response_status}: {' '.join((result.response_body or '').split())}"
