"""The evidence report as one self-contained HTML page: inline CSS, no scripts, no external
assets, Dutch headings (README: user-facing text is Dutch by default), a print stylesheet."""

from __future__ import annotations

import json
from html import escape
from typing import Any, Iterable, Sequence

REASONS_NL = {"collected": "opgehaald en na de bewaartermijn verwijderd", "expired": "verlopen, niet opgehaald",
              "replaced": "vervangen door een correctie", "withdrawn": "ingetrokken door de afzender",
              "deleted": "verwijderd door de gemeente", "admin": "verwijderd door een beheerder"}
STATES_NL = {"published": "klaar om op te halen", "collected": "opgehaald", "removed": "verwijderd",
             "pending": "wacht", "sent": "verstuurd", "delivered": "afgeleverd", "undelivered": "niet afgeleverd",
             "failed": "mislukt", "cancelled": "geannuleerd", "sender": "afzender", "recipient": "ontvanger"}

QUIET_EVENTS = ("auth.success",)

CSS = """
*{box-sizing:border-box}
body{font-family:"DejaVu Sans",Arial,Helvetica,sans-serif;font-size:10.5pt;color:#111;margin:2em auto;max-width:62em;
 padding:0 1.5em;line-height:1.4}
h1{font-size:19pt;margin:0 0 .2em}
h2{font-size:15pt;border-bottom:2px solid #1d4f91;padding-bottom:.15em;margin-top:1.8em;color:#1d4f91}
h3{font-size:12pt;margin:1.3em 0 .4em}
table{border-collapse:collapse;width:100%;margin:.3em 0 1em}
th,td{border:1px solid #bbb;padding:.25em .45em;text-align:left;vertical-align:top}
th{background:#eef2f8}
tr{page-break-inside:avoid}
code,.hash{font-family:"DejaVu Sans Mono",monospace;font-size:8.5pt;word-break:break-all}
.meta td:first-child{width:14em;font-weight:bold}
.ok{color:#0a6b2b;font-weight:bold}
.bad{color:#b00020;font-weight:bold}
.muted{color:#555}
.box{border:1px solid #bbb;padding:.6em .8em;margin:.6em 0;page-break-inside:avoid}
footer{margin-top:2em;font-size:9pt;color:#444;border-top:1px solid #bbb;padding-top:.5em}
@page{size:A4;margin:15mm}
@media print{body{margin:0;max-width:none;padding:0;font-size:9.5pt}
 h2{page-break-after:avoid}section.tenant+section.tenant{page-break-before:always}
 thead{display:table-header-group}a{color:inherit;text-decoration:none}}
"""


def _e(value: Any) -> str:
    if value is None or value == "":
        return '<span class="muted">–</span>'
    return escape(str(value))


def _when(ts: str | None) -> str:
    return _e(ts.replace("T", " ").rstrip("Z")[:19] + " UTC" if ts else None)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _meta(rows: Iterable[tuple[str, str]]) -> str:
    return '<table class="meta">' + "".join(f"<tr><td>{escape(k)}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _detail(record: dict[str, Any]) -> str:
    return f"<code>{escape(json.dumps(record['detail'], ensure_ascii=False, sort_keys=True))}</code>"


def _chain(chain: dict[str, Any]) -> str:
    status = ('<span class="ok">intact</span>' if chain["ok"] else
              f'<span class="bad">GEBROKEN bij record #{_e(chain["bad_seq"])}: {_e(chain["reason"])}</span>')
    return _meta([("Hashketen", status), ("Gecontroleerde records", _e(chain["checked"])),
                  ("Laatste record (kop)", f'#{_e(chain["head_seq"])}'),
                  ("Hash van de kop", f'<span class="hash">{_e(chain["head_hash"])}</span>')])


def _protocol(protocol: dict[str, Any] | None) -> str:
    if protocol is None:
        return '<p class="bad">Geen protocol geregistreerd: er mag niets geleverd worden.</p>'
    return _meta([("Ondertekend", _e(protocol["signed"])), ("Van kracht sinds", _e(protocol["effective"])),
                  ("Referentie", _e(protocol["reference"])), ("Opgezegd op", _e(protocol["notice"])),
                  ("Einddatum", _e(protocol["ends"]))])


def _delivery(d: dict[str, Any]) -> str:
    sms = "<br>".join(
        f"{_e(m['kind'].upper())} {_e(m['target'])}: {_e(STATES_NL.get(m['state'], m['state']))}"
        + (f" ({_e(m['provider_status'])})" if m["provider_status"] else "") + f", {_e(m['attempts'])}× geprobeerd"
        for m in d["messages"]) or '<span class="muted">geen berichten</span>'
    collected = (f"door <b>{_e(d['collected_by'])}</b> op {_when(d['collected_at'])} vanaf {_e(d['collected_from'])}"
                 if d["collected_at"] else '<span class="muted">niet opgehaald</span>')
    removed = (f"{_when(d['removed_at'])}: {_e(REASONS_NL.get(d['removed_reason'], d['removed_reason']))}"
               if d["removed_at"] else _e(None))
    receipt = d["receipt"]
    return (f'<div class="box"><h3>{_e(d["name"])} <span class="muted">({_e(d["id"])})</span></h3>' + _meta([
        ("Afzender", _e(d["sender"])), ("Toestand", _e(STATES_NL.get(d["state"], d["state"]))),
        ("Gepubliceerd", _when(d["published_at"])), ("Vervalt", _when(d["expires_at"])),
        ("Grootte", f"{_e(d['plain_size'])} bytes (versleuteld {_e(d['stored_size'])} bytes)"),
        ("SHA-256 (inhoud)", f'<span class="hash">{_e(d["plain_sha256"])}</span>'),
        ("Sleutel per sms", sms), ("Opgehaald", collected), ("Verwijderd", removed),
        ("Sleutel vernietigd", _when(d["key_destroyed_at"])),
        ("Ontvangstbewijs", f"{_e(REASONS_NL.get(receipt['outcome'], receipt['outcome']) if receipt['outcome'] != 'collected' else 'opgehaald')}, "
                            f"{_when(receipt['issued_at'])}, ondertekend" if receipt else _e(None)),
        ("Auditrecords", ", ".join(f"#{s}" for s in d["events"]) or _e(None)),
    ]) + "</div>")


def _tenant(t: dict[str, Any]) -> str:
    dpo = t["dpo"]
    accounts = _table(["Account", "Rol", "Functie", "Actief", "Laatste aanmelding"], (
        (_e(a["name"]), _e(STATES_NL.get(a["role"], a["role"])), _e(a["function"]), "ja" if a["active"] else "nee",
         _when(a["last_login"])) for a in t["accounts"]), "Geen accounts.")
    refused = _table(["Tijdstip", "Door", "Vanaf", "Details"], (
        (_when(r["ts"]), _e(r["actor"]), _e(r["source"]), _detail(r)) for r in t["refused_uploads"]),
        "Geen geweigerde of afgebroken uploads in deze periode.")
    denied = _table(["Tijdstip", "Soort", "Account", "Vanaf", "Details"], (
        (_when(r["ts"]), _e(r["event"]), _e(r["actor"]), _e(r["source"]), _detail(r)) for r in t["denied"]),
        "Geen geweigerde toegangspogingen in deze periode.")
    incidents = _table(["Nr", "Soort", "Account", "Adres", "Eerst", "Laatst", "Aantal", "Toestand", "Melden vóór"], (
        (_e(i["id"]), _e(i["kind"]), _e(i["account"]), _e(i["source"]), _when(i["first_seen"]),
         _when(i["last_seen"]), _e(i["count"]), _e(i["state"]), _when(i["deadline"])) for i in t["incidents"]),
        "Geen incidenten in deze periode.")
    # Successful logins can run into thousands: the accounts table has the last one, JSON has all.
    shown = [r for r in t["events"] if r["event"] not in QUIET_EVENTS]
    quiet = len(t["events"]) - len(shown)
    events = _table(["#", "Tijdstip", "Gebeurtenis", "Door", "Levering", "Vanaf", "Details"], (
        (_e(r["seq"]), _when(r["ts"]), _e(r["event"]), _e(r["actor"]), _e(r["delivery"]), _e(r["source"]),
         _detail(r)) for r in shown), "Geen auditrecords in deze periode.") + (
        f'<p class="muted">{quiet} geslaagde aanmeldingen zijn niet afzonderlijk getoond '
        "(het JSON-rapport en <code>sluis audit export</code> bevatten ze).</p>" if quiet else "")
    deliveries = "".join(_delivery(d) for d in t["deliveries"]) or '<p class="muted">Geen leveringen in deze periode.</p>'
    return (f'<section class="tenant"><h2>Gemeente {_e(t["name"])}'
            + (f' <span class="muted">(NIS {_e(t["nis"])})</span>' if t["nis"] else "") + "</h2>"
            + _meta([("Actief", "ja" if t["active"] else "nee"), ("Telefoons voor de sleutel", _e(", ".join(t["phones"]))),
                     ("Functionaris gegevensbescherming", _e(" ".join(p for p in (dpo["name"], dpo["email"], dpo["phone"]) if p)))])
            + "<h3>Protocol (register)</h3>" + _protocol(t["protocol"])
            + "<h3>Accounts en hun functie</h3>" + accounts
            + "<h3>Leveringen</h3>" + deliveries
            + "<h3>Geweigerde uploads</h3>" + refused
            + "<h3>Geweigerde toegangspogingen</h3>" + denied
            + "<h3>Incidenten</h3>" + incidents
            + "<h3>Auditrecords</h3>" + events + "</section>")


def render_html(report: dict[str, Any]) -> str:
    period = report["period"]
    scope = report["tenant"] or "alle gemeenten"
    title = f"Bewijsrapport sluis – {scope}"
    span = ("volledige auditlog" if not period["from"] and not period["to"] else
            f"{_when(period['from']) if period['from'] else 'begin'} tot {_when(period['to']) if period['to'] else 'nu'}")
    head = _meta([("Gemeente", _e(scope)), ("Periode", span),
                  ("Opgemaakt op", _when(report["generated_at"])), ("Opgemaakt door", _e(report["generated_by"]))])
    body = "".join(_tenant(t) for t in report["tenants"]) or '<p class="bad">Geen gemeente gevonden.</p>'
    return ("<!DOCTYPE html>\n<html lang=\"nl\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1>{head}<h2>Auditlog</h2>{_chain(report['audit_chain'])}{body}"
            "<footer>Elk auditrecord draagt de SHA-256 van het vorige; <code>sluis audit verify</code> controleert "
            "de keten, <code>sluis audit export --json</code> geeft dezelfde records. Ontvangstbewijzen controleert "
            "u met <code>ssh-keygen -Y verify -I sluis -n sluis-receipt</code> (zie README).</footer>"
            "</body></html>\n")
