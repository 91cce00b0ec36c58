"""The client API the official SDKs and CLI use (`../shared/spec/client-api.md`)."""
