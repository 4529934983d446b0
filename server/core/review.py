"""The periodic access review (protocol art. 4): accounts unused for a while (last login from the
audit log's `auth.success` records), expired or old keys, and users without a function profile."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from .clock import Clock, iso
from .store import Store

UNUSED, NEVER_USED, KEY_EXPIRED, KEY_OLD, NO_FUNCTION = (
    "unused", "never-used", "key-expired", "key-old", "no-function")


@dataclass(frozen=True)
class ReviewRow:
    user: str
    role: str
    tenant: str | None
    active: bool
    function: str
    last_login: str | None
    findings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class AccountReview:
    """Reads users, keys and logins; changes nothing."""

    def __init__(self, db: Store, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def last_logins(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self.db.query(
            "SELECT actor, MAX(ts) FROM audit WHERE event = 'auth.success' GROUP BY actor")}

    def run(self, *, unused_days: int, key_age_days: int, include_disabled: bool = False) -> list[ReviewRow]:
        """Every account with at least one finding."""
        now = self.clock.now()
        unused_before = iso(now - timedelta(days=unused_days))
        old_before = iso(now - timedelta(days=key_age_days))
        logins = self.last_logins()
        users = self.db.query("SELECT u.id, u.name, u.role, u.active, u.function, u.created_at, t.name AS tenant"
                              " FROM users u LEFT JOIN tenants t ON t.id = u.tenant_id ORDER BY u.name")
        rows = []
        for u in users:
            if not u["active"] and not include_disabled:
                continue
            findings = []
            last = logins.get(u["name"])
            if last is None and u["created_at"] < unused_before:
                findings.append(f"{NEVER_USED}: no login since it was created on {u['created_at'][:10]}")
            elif last is not None and last < unused_before:
                findings.append(f"{UNUSED}: last login {last[:10]}, more than {unused_days} days ago")
            for key in self.db.query("SELECT fingerprint, added_at, expires_at FROM user_keys WHERE user_id = ?"
                                     " ORDER BY id", (u["id"],)):
                if key["expires_at"] and key["expires_at"] <= iso(now):
                    findings.append(f"{KEY_EXPIRED}: {key['fingerprint']} expired on {key['expires_at'][:10]}")
                elif key["added_at"] < old_before:
                    findings.append(f"{KEY_OLD}: {key['fingerprint']} added {key['added_at'][:10]}, "
                                    f"more than {key_age_days} days ago")
            if not u["function"].strip():
                findings.append(f"{NO_FUNCTION}: no function description (sluis user set {u['name']} --function ...)")
            if findings:
                rows.append(ReviewRow(user=u["name"], role=u["role"], tenant=u["tenant"], active=bool(u["active"]),
                                      function=u["function"], last_login=last, findings=findings))
        return rows
