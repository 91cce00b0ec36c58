"""Hosts ("Islands"): registration, pairing, heartbeats, approval, suspension and the live fleet view."""
