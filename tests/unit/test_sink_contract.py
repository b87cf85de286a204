"""The sink contract (tests/sink_contract.py) on the in-memory sink."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from poller.sink import Sink
from poller.sink.memory import MemorySink
from tests import sink_contract as contract

APPS = ("app-a", "app-b")


async def refuse(sink: Sink, app: str) -> Callable[[], Awaitable[None]]:
    assert isinstance(sink, MemorySink)
    sink.refuse(app, "WRONGTYPE held by something else")

    async def undo() -> None:
        sink.refuse(app, None)

    return undo


async def test_each_message_once() -> None:
    await contract.check_each_message_once(MemorySink(), APPS)


async def test_marks_are_per_writer() -> None:
    await contract.check_marks_are_per_writer(MemorySink(), "app-a")


async def test_forwarded_duplicates() -> None:
    await contract.check_forwarded_duplicates(MemorySink(), "app-a")


async def test_dead_letters() -> None:
    await contract.check_dead_letters(MemorySink(), "app-a")


async def test_one_refusing_stream() -> None:
    await contract.check_one_refusing_stream(MemorySink(), APPS, refuse)


async def test_outage_raises() -> None:
    sink = MemorySink()

    async def down() -> None:
        sink.fail("connection refused")

    await contract.check_outage_raises(sink, down)


async def test_groups() -> None:
    await contract.check_groups(MemorySink(), "app-a")


async def test_redrive_once() -> None:
    await contract.check_redrive_once(MemorySink(), "app-a")


async def test_leftovers_take_the_letters_place() -> None:
    await contract.check_leftovers_take_the_letters_place(MemorySink(), "app-a")


async def test_purge_spares_message_streams() -> None:
    await contract.check_purge_spares_message_streams(MemorySink(), "app-a")
