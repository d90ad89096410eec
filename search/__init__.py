"""Search a catalogue collection with store photos. See ARCHITECTURE.md in this folder."""

__all__: list[str] = []
