"""Inbound (MO) push messages shaped like Infobip's documented MoReportResult."""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

# Mixed scripts, emoji with ZWJ sequences, astral-plane and combining characters: the
# pipeline must carry every one of them byte for byte.
TEXTS = (
    "Hello from the app 👋",
    "Where is my order #4711?",
    "Où est ma commande ? Merci beaucoup 🙏",
    "¿Cuándo llega mi pedido?",
    "Zürich → München, Gleis 7 🚆",
    "注文はいつ届きますか？",
    "请帮我取消订阅",
    "주문 상태 확인 부탁드립니다",
    "Где мой заказ?",
    "مرحبا، أحتاج إلى مساعدة",
    "שלום, יש לי שאלה",
    "Şirket hesabımı nasıl açarım?",
    "Ça marche très bien 🎉🎉",
    "👩‍💻 works from home today, 🇭🇷 flag too",
    "Cafe\u0301 au lait, s'il vous pla\u00eet",  # a combining accent, then a precomposed one
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 🦄 outside the BMP",
    'quotes "inside", back\\slash, tab\tand newline\nsecond line',
    "ok",
)
KEYWORDS = ("STOP", "HELP", "INFO", "JOIN", "PROMO")
DEVICES_PER_APP = 16
# Distinct message shapes a bulk backlog cycles through (ids and times differ per message).
BULK_TEMPLATES = 64
# Messages of a bulk backlog that share one receivedAt reading of the clock.
BULK_CLOCK_EVERY = 1000
_ID_MARK = "@@bulk-message-id@@"
_AT_MARK = "@@bulk-received-at@@"
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# A message waiting for delivery: a dict, or its JSON bytes (bulk backlogs keep them encoded).
InboxMessage = dict[str, Any] | bytes


def format_received_at(moment: datetime) -> str:
    """Infobip's yyyy-MM-dd'T'HH:mm:ss.SSSZ, e.g. 2026-11-26T14:48:46.123+0000."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}+0000"


class MessageFactory:
    """Builds realistic messages from a seeded random source."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._devices: dict[str, list[tuple[str, str | None]]] = {}

    def uuid(self) -> str:
        """A random UUID4 string drawn from the seeded source."""
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def hex_key(self) -> str:
        """A 32-hex-digit key, the shape of Infobip configuration keys."""
        return f"{self._rng.getrandbits(128):032X}"

    def make(
        self,
        app: str,
        *,
        callback_data: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One MoReportResult for app, with extra (possibly unknown) fields merged in."""
        rng = self._rng
        registration_id, subscriber_id = rng.choice(self._devices_of(app))
        clean_text = rng.choice(TEXTS)
        message: dict[str, Any] = {
            "messageId": self.uuid(),
            "from": registration_id,
            "to": app,
            "applicationCode": app,
            "receivedAt": format_received_at(datetime.now(UTC)),
        }
        if subscriber_id is not None:
            message["subscriberId"] = subscriber_id
        if rng.random() < 0.3:
            keyword = rng.choice(KEYWORDS)
            message["text"] = f"{keyword} {clean_text}"
            message["keyword"] = keyword
        else:
            message["text"] = clean_text
        message["cleanText"] = clean_text
        if callback_data is not None:
            message["callbackData"] = callback_data
        if rng.random() < 0.6:
            message["customPayload"] = self._custom_payload()
        if rng.random() < 0.3:
            message["pairedMessageId"] = self.uuid()
            message["initialMessageId"] = self.uuid()
        if rng.random() < 0.2:
            message["bulkId"] = self.uuid()
        if extra:
            message.update(copy.deepcopy(dict(extra)))
        return message

    def encoded(
        self, app: str, count: int, *, callback_data: str | None = None
    ) -> Iterator[tuple[str, bytes]]:
        """count messages for app as (messageId, JSON bytes), for a large backlog.

        Each is one of a few dozen message shapes with its own messageId and receivedAt, spliced
        into the shape's pre-encoded JSON: about 3 microseconds and 0.6 KB per message, where a
        dict per message costs five times the time and twice the memory, and a pull serves them
        without encoding them again."""
        templates: list[tuple[bytes, bytes, bytes]] = []
        for _ in range(min(count, BULK_TEMPLATES)):
            message = self.make(app, callback_data=callback_data)
            message["messageId"] = _ID_MARK
            message["receivedAt"] = _AT_MARK
            before_id, after_id = _ENCODE(message).split(_ID_MARK)
            between, after_at = after_id.split(_AT_MARK)
            templates.append((before_id.encode(), between.encode(), after_at.encode()))
        received_at = b""
        for n in range(count):
            if n % BULK_CLOCK_EVERY == 0:
                received_at = format_received_at(datetime.now(UTC)).encode()
            head, middle, tail = templates[n % len(templates)]
            message_id = self.uuid()
            yield message_id, head + message_id.encode() + middle + received_at + tail

    def _devices_of(self, app: str) -> list[tuple[str, str | None]]:
        # A fixed pool per application, so the same device writes more than once.
        if app not in self._devices:
            self._devices[app] = [
                (self.uuid(), self._subscriber_id() if self._rng.random() < 0.5 else None)
                for _ in range(DEVICES_PER_APP)
            ]
        return self._devices[app]

    def _subscriber_id(self) -> str:
        if self._rng.random() < 0.5:
            return f"3859{self._rng.randrange(10_000_000, 99_999_999)}"
        return f"customer-{self._rng.randrange(1, 1_000_000):06d}"

    def _custom_payload(self) -> dict[str, Any]:
        # The schema wants every customPayload value to be an object.
        rng = self._rng
        payload: dict[str, Any] = {
            "order": {
                "id": f"ORD-{rng.randrange(100_000, 999_999)}",
                "items": [{"sku": f"SKU-{rng.randrange(1000)}", "qty": rng.randrange(1, 5)}],
                "total": {"amount": round(rng.uniform(1, 500), 2), "currency": "EUR"},
            }
        }
        if rng.random() < 0.5:
            payload["device"] = {
                "os": rng.choice(["Android 14", "iOS 17.4", "HarmonyOS 4"]),
                "locale": rng.choice(["hr-HR", "ja-JP", "fr-FR", "ar-EG"]),
                "flags": {"beta": rng.random() < 0.5, "nested": {"depth": 3, "empty": {}}},
            }
        return payload
