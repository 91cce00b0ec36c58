"""Outgoing e-mail: every message goes to the outbox table; SMTP delivers it when configured, else the log."""

from __future__ import annotations

import asyncio
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.models import EmailOutbox
from coordinator.repo.base import utcnow

log = structlog.get_logger(__name__)


@dataclass
class Mailer:
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = None
    sender: str = "coordinator@localhost"

    async def send(self, session: AsyncSession, to: str, subject: str, body: str) -> EmailOutbox:
        message = EmailOutbox(recipient=to, subject=subject, body=body)
        session.add(message)
        if self.smtp_host is None:
            # No SMTP (a laptop, `make run`): the console log and the outbox table are the delivery.
            log.info("email.outbox", to=to, subject=subject, body=body)
        else:
            try:
                await asyncio.to_thread(self._deliver, to, subject, body)
                message.sent_at = utcnow()
            except (OSError, smtplib.SMTPException) as exc:
                message.error = str(exc)
                log.warning("email.smtp_failed", to=to, error=str(exc))
        await session.flush()
        return message

    def _deliver(self, to: str, subject: str, body: str) -> None:
        assert self.smtp_host is not None
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = self.sender, to, subject
        msg.set_content(body)
        with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=10) as smtp:
            if self.smtp_user:
                smtp.starttls()
                smtp.login(self.smtp_user, self.smtp_password or "")
            smtp.send_message(msg)
