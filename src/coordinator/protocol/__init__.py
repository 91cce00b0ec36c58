"""The Island ⇄ coordinator wire protocol: subject names and message shapes (`spec/island-protocol.md`).

Shared with the reference Island, so it imports nothing else of the coordinator."""
