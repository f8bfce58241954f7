"""Server-Sent Events, line by line (the subset the server sends: ``event``, ``data``, comments, blank lines)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    name: str
    data: str


class Decoder:
    """Feed lines (without their line ending); a blank line dispatches the event gathered so far."""

    def __init__(self) -> None:
        self._name = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._name = "message"
                return None
            event = Event(self._name, "\n".join(self._data))
            self._name, self._data = "message", []
            return event
        if line.startswith(":"):  # comment / keep-alive ping
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
        return None  # `id` and `retry` are not used by the Glassbox API
