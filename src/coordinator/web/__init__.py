"""HTTP transport: the FastAPI app, the v1 REST API, SSE, channels and pages."""
