"""The API's router: a route's `response_model` documents and checks its answer, but never adds keys.

FastAPI fills every model field the handler did not set (an absent optional field becomes `null`). The
clients treat absent and null differently in places (client-api §2.4), and the presenters already decide
which keys to send, so answers are serialised with `exclude_unset`: exactly the keys the handler gave."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter


class ApiRouter(APIRouter):
    def add_api_route(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        kwargs["response_model_exclude_unset"] = True
        super().add_api_route(path, endpoint, **kwargs)
