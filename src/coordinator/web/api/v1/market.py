"""Market endpoints (filled below)."""

from fastapi import APIRouter

router = APIRouter(tags=["market"])
