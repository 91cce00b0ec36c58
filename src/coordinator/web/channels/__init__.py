"""The Phoenix Channels face of the coordinator (spec/channels.md): socket, job, user and Island channels."""
