"""The texts of incident alerts and DPO notices, Dutch by default ([incidents] language).

Never a secret (no passphrase, no password, no key material beyond a fingerprint); every string
a client chose (a user name, a path) is quoted with control characters escaped and cut short,
so an attacker's text cannot pass for ours.
"""

from __future__ import annotations

from typing import Any

from ..server.core.incidents import Entry, Incident

QUOTE_MAX = 80


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def quote(value: Any) -> str:
    """A client-supplied string, double-quoted, cut to QUOTE_MAX; quotes, backslashes and every
    non-printable character (controls, escape sequences, bidi overrides) escaped as in JSON."""
    text = str(value)
    cut = len(text) > QUOTE_MAX
    out = []
    for ch in text[:QUOTE_MAX]:
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + ('…"' if cut else '"')


KINDS: dict[str, tuple[str, str]] = {
    # kind: (Dutch, English)
    "auth.failure": ("herhaalde mislukte aanmeldingen", "repeated failed logins"),
    "auth.ban": ("bron geblokkeerd na verdachte pogingen", "source banned after suspicious attempts"),
    "auth.refused": ("verbinding van een geblokkeerde bron geweigerd", "connection from a banned source refused"),
    "protocol.error": ("ongeldig of misvormd protocolverkeer", "malformed or out-of-order protocol"),
    "sftp.deny": ("geweigerde bewerking of poging buiten de eigen map", "denied operation or access outside the user's folder"),
    "sftp.limit": ("limiet overschreden", "limit exceeded"),
    "audit.broken": ("auditlog gebroken of ingekort", "audit log broken or truncated"),
}


def describe(entry: Entry, language: str, count: int) -> str:
    """The incident's short description: its kind and the client's words, quoted."""
    base = KINDS[entry.event][0 if language == "nl" else 1]
    d = entry.detail
    extra: list[str] = []
    if entry.event == "auth.failure":
        extra.append(f"{count}x" + (f", {quote(d['reason'])}" if d.get("reason") else ""))
    elif entry.event == "sftp.deny":
        extra += [quote(d.get("op", "?")), quote(d.get("path", "?"))]
    elif entry.event == "sftp.limit":
        extra += [quote(d.get("limit", "?")), f"{quote(d.get('value', '?'))} > {quote(d.get('allowed', '?'))}"]
    elif entry.event == "protocol.error":
        extra.append(quote(d.get("what", "?")))
    elif entry.event == "audit.broken":
        extra += [f"#{d.get('seq', '?')}", quote(d.get("reason", "?"))]
    elif entry.event in ("auth.ban", "auth.refused"):
        extra.append(quote(d.get("why") or d.get("reasons") or d.get("score") or "?"))
    return f"{base}: {' '.join(extra)}" if extra else base


def alert(incident: Incident, language: str, *, last: bool = False) -> tuple[str, str, str]:
    """(subject, e-mail body, SMS text) of the alert sent when an incident opens; `last` says
    that the hourly alert cap is reached, so further incidents this hour come without alert."""
    account = quote(incident.account) if incident.account else "-"
    source = quote(incident.source) if incident.source else "-"
    deadline = incident.deadline[:16].replace("T", " ") + " UTC"
    dpo = _dpo(incident)
    if language == "nl":
        subject = f"sluis: incident #{incident.id} ({incident.kind}), melden voor {deadline}"
        body = (f"Beveiligingsincident #{incident.id} op de sluis-server.\n\n"
                f"Wat:         {incident.what}\n"
                f"Soort:       {incident.kind}\n"
                f"Bron:        {source}\n"
                f"Account:     {account}\n"
                f"Gemeente:    {incident.tenant or '-'}\n"
                f"Eerst gezien: {incident.first_seen}\n"
                f"Aantal:      {incident.count}\n"
                f"Melden voor: {deadline} (24 uur na detectie, protocol art. 6)\n"
                f"DPO:         {dpo or '-'}\n\n"
                f"Meld het incident{' aan de DPO van de gemeente en' if dpo else ''} volgens de procedure, "
                f"en leg de melding vast:\n"
                f"  sluis incidents ack {incident.id} --note 'gemeld aan ... op ...'\n"
                f"Overzicht: sluis incidents\n")
        sms = (f"sluis incident #{incident.id}: {incident.kind} van {source} account {account}"
               f"{' gemeente ' + incident.tenant if incident.tenant else ''}. Melden voor {deadline}."
               f"{' DPO: ' + dpo if dpo else ''}")
    else:
        subject = f"sluis: incident #{incident.id} ({incident.kind}), report before {deadline}"
        body = (f"Security incident #{incident.id} on the sluis server.\n\n"
                f"What:        {incident.what}\n"
                f"Kind:        {incident.kind}\n"
                f"Source:      {source}\n"
                f"Account:     {account}\n"
                f"Tenant:      {incident.tenant or '-'}\n"
                f"First seen:  {incident.first_seen}\n"
                f"Count:       {incident.count}\n"
                f"Report by:   {deadline} (24 hours after detection, protocol art. 6)\n"
                f"DPO:         {dpo or '-'}\n\n"
                f"Report it{' to the tenant DPO and' if dpo else ''} as the procedure says, then record the report:\n"
                f"  sluis incidents ack {incident.id} --note 'reported to ... on ...'\n"
                f"Overview: sluis incidents\n")
        sms = (f"sluis incident #{incident.id}: {incident.kind} from {source} account {account}"
               f"{' tenant ' + incident.tenant if incident.tenant else ''}. Report before {deadline}."
               f"{' DPO: ' + dpo if dpo else ''}")
    if last:
        cap = (" Meer incidenten dit uur zonder melding: zie sluis incidents." if language == "nl" else
               " Further incidents this hour are not alerted: see sluis incidents.")
        body += "\n" + cap.strip() + "\n"
        sms = sms[:300 - len(cap)] + cap
    return subject, body, sms[:300]


def _dpo(incident: Incident) -> str | None:
    parts = [p for p in (incident.dpo_name, f"<{incident.dpo_email}>" if incident.dpo_email else None,
                         incident.dpo_phone) if p]
    return " ".join(parts) if parts else None


def dpo_notice(entry: Entry, tenant: str, language: str) -> tuple[str, str]:
    """(subject, body) of the mail that tells a tenant's DPO its phones or recipients changed."""
    d = entry.detail
    user = quote(d.get("user", "?"))
    nl = language == "nl"
    if entry.event == "tenant.change":
        what = (f"telefoonnummers voor de sleutel-sms gewijzigd: {d.get('phones_added') or 0} toegevoegd, "
                f"{d.get('phones_removed') or 0} verwijderd, nu {d.get('phones')}" if nl else
                f"phones for key SMS changed: {d.get('phones_added') or 0} added, {d.get('phones_removed') or 0} "
                f"removed, now {d.get('phones')}")
    elif entry.event == "user.add":
        what = f"ontvanger {user} toegevoegd" if nl else f"recipient {user} added"
    elif entry.event == "user.disable":
        what = f"ontvanger {user} uitgeschakeld" if nl else f"recipient {user} disabled"
    elif entry.event == "user.key.add":
        what = (f"SSH-sleutel toegevoegd aan ontvanger {user}" if nl else f"SSH key added to recipient {user}")
    else:
        what = (f"SSH-sleutel verwijderd van ontvanger {user}" if nl else f"SSH key removed from recipient {user}")
    when = entry.ts[:16].replace("T", " ") + " UTC"
    if nl:
        return (f"sluis: wijziging voor {tenant}",
                f"Beste DPO,\n\nOp de sluis-server van het Agentschap Integratie en Inburgering is voor "
                f"{tenant} gewijzigd:\n\n  {what}\n\nWanneer: {when}\nDoor:    {entry.actor}\n\n"
                f"Was deze wijziging niet gevraagd? Neem dan contact op met het Agentschap.\n")
    return (f"sluis: change for {tenant}",
            f"Dear DPO,\n\nOn the agency's sluis server, for {tenant}:\n\n  {what}\n\nWhen: {when}\n"
            f"By:   {entry.actor}\n\nIf this change was not requested, please contact the agency.\n")
