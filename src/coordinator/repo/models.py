"""Imports every context's tables so that the metadata (and Alembic) sees the whole schema."""

from coordinator.accounts import models as accounts
from coordinator.billing import exchange_models as exchange
from coordinator.billing import models as billing
from coordinator.hosts import models as hosts
from coordinator.jobs import models as jobs
from coordinator.karma import models as karma
from coordinator.marketplace import tables as marketplace
from coordinator.repo.base import Base
from coordinator.verification import models as verification
from coordinator.workloads import models as workloads

metadata = Base.metadata

__all__ = [
    "accounts",
    "billing",
    "exchange",
    "hosts",
    "jobs",
    "karma",
    "marketplace",
    "metadata",
    "verification",
    "workloads",
]
