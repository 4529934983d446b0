"""`sluis tenant …` and `sluis user …`: municipalities, people and their keys."""

from __future__ import annotations

import sys
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

from ...keydelivery.phones import InvalidPhoneError, normalise_phone
from ..errors import InvalidInput
from .common import open_app, operator, print_json, print_table


def _phones(raw: list[str], region: str) -> list[str]:
    numbers = []
    for text in raw:
        try:
            phone = normalise_phone(text, region)
        except InvalidPhoneError as exc:
            raise InvalidInput(str(exc)) from None
        if phone.warning:
            print(f"warning: {phone.warning}", file=sys.stderr)
        numbers.append(phone.e164)
    return numbers


def _date(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{flag} {text!r}: expected a date as YYYY-MM-DD") from None


def _moment(text: str, flag: str) -> datetime:
    """YYYY-MM-DD (midnight UTC at the start of that day) or a full ISO-8601 time."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), tzinfo=timezone.utc)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{flag} {text!r}: expected a date as YYYY-MM-DD") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _dpo_arguments(parser: Any) -> None:
    parser.add_argument("--dpo-name", metavar="TEXT", help="the municipality's data protection officer ('' removes)")
    parser.add_argument("--dpo-email", metavar="ADDR", help="the DPO's e-mail: told of phone and recipient changes")
    parser.add_argument("--dpo-phone", metavar="E164", help="the DPO's phone, named in incident alerts")


def _dpo_phone(args: Any, region: str) -> str | None:
    if not args.dpo_phone:
        return args.dpo_phone  # None: unchanged; '': remove
    return _phones([args.dpo_phone], region)[0]


def add_tenant_commands(commands: Any, command: Any) -> None:
    tenant = commands.add_parser("tenant", help="municipalities and their drop boxes").add_subparsers(
        dest="tenant_command", required=True, metavar="ACTION")
    add = command(tenant, "add", cmd_tenant_add, "add a municipality",
                  "Add a municipality. NAME is a short lowercase slug (genk): the folder senders see.")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--nis", metavar="CODE", help="five-digit NIS code (71016 for Genk)")
    add.add_argument("--phone", action="append", required=True, metavar="E164",
                     help="phone that receives passphrases by SMS; repeat for more")
    add.add_argument("--email", metavar="ADDR", help="contact address for 'a file is waiting' e-mails")
    add.add_argument("--format", choices=("age", "zip"), default="age",
                     help="stored format: age (default) or an AES-256 zip for 7-Zip users")
    _dpo_arguments(add)
    change = command(tenant, "set", cmd_tenant_set, "change phones, e-mail, format or DPO of a municipality")
    change.add_argument("name", metavar="NAME")
    change.add_argument("--phone", action="append", metavar="E164", help="replaces all phones; repeat")
    change.add_argument("--email", metavar="ADDR", help="contact address ('' removes it)")
    change.add_argument("--format", choices=("age", "zip"))
    _dpo_arguments(change)
    listing = command(tenant, "list", cmd_tenant_list, "list municipalities")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = command(tenant, "show", cmd_tenant_show, "show one municipality, its protocol and standing")
    show.add_argument("name", metavar="NAME")
    disable = command(tenant, "disable", cmd_tenant_disable, "disable a municipality (its folder disappears)")
    disable.add_argument("name", metavar="NAME")
    protocol = command(tenant, "protocol", cmd_tenant_protocol, "register the data-sharing protocol",
                       "Register the protocol (--signed, --effective, --reference) or its termination "
                       "(--notice: the protocol ends twelve months later). Uploads are accepted only "
                       "while it is in force.")
    protocol.add_argument("name", metavar="NAME")
    protocol.add_argument("--signed", metavar="DATE")
    protocol.add_argument("--effective", metavar="DATE")
    protocol.add_argument("--reference", metavar="TEXT", default="")
    protocol.add_argument("--notice", metavar="DATE", help="date notice was given")


def cmd_tenant_add(args: Any) -> None:
    app = open_app(args)
    phones = _phones(args.phone, app.settings.sms.default_region)
    tenant = app.directory.add_tenant(operator(), args.name, phones=phones, nis=args.nis,
                                      email=args.email, fmt=args.format, dpo_name=args.dpo_name,
                                      dpo_email=args.dpo_email,
                                      dpo_phone=_dpo_phone(args, app.settings.sms.default_region))
    print(f"added tenant {tenant.name} (format {tenant.format}, phones {', '.join(tenant.phones)})")
    print(f"register its protocol before uploads: sluis tenant protocol {tenant.name} --signed DATE --effective DATE")


def cmd_tenant_set(args: Any) -> None:
    app = open_app(args)
    phones = _phones(args.phone, app.settings.sms.default_region) if args.phone else None
    tenant = app.directory.update_tenant(operator(), args.name, phones=phones, email=args.email, fmt=args.format,
                                         dpo_name=args.dpo_name, dpo_email=args.dpo_email,
                                         dpo_phone=_dpo_phone(args, app.settings.sms.default_region))
    print(f"updated tenant {tenant.name}")


def cmd_tenant_list(args: Any) -> None:
    app = open_app(args)
    tenants = app.directory.tenants()
    if args.json:
        print_json([t.__dict__ for t in tenants])
        return
    print_table(["NAME", "NIS", "FORMAT", "ACTIVE", "PHONES", "EMAIL", "DPO"],
                [(t.name, t.nis, t.format, "yes" if t.active else "no", " ".join(t.phones), t.email, t.dpo)
                 for t in tenants])


def cmd_tenant_show(args: Any) -> None:
    app = open_app(args)
    tenant = app.directory.tenant(args.name)
    protocol = app.protocols.get(tenant)
    today = app.clock.now().date()
    print(f"tenant:    {tenant.name}  (id {tenant.id}, NIS {tenant.nis or '-'})")
    print(f"active:    {'yes' if tenant.active else 'no'}")
    print(f"format:    {tenant.format}")
    print(f"phones:    {', '.join(tenant.phones)}")
    print(f"e-mail:    {tenant.email or '-'}")
    print(f"DPO:       {tenant.dpo or '-'}")
    print(f"protocol:  {protocol.describe(today) if protocol else 'none registered'}"
          + (f"  [{protocol.reference}]" if protocol and protocol.reference else ""))
    print(f"delivery:  {app.policy.standing(app.db, tenant)}")
    recipients = [u.name for u in app.directory.users() if u.tenant_id == tenant.id and u.active]
    print(f"recipients: {', '.join(recipients) or '-'}")


def cmd_tenant_disable(args: Any) -> None:
    open_app(args).directory.disable_tenant(operator(), args.name)
    print(f"disabled tenant {args.name}")


def cmd_tenant_protocol(args: Any) -> None:
    app = open_app(args)
    tenant = app.directory.tenant(args.name)
    if args.notice:
        ends = app.protocols.give_notice(operator(), tenant, _date(args.notice, "--notice"))
        print(f"notice registered: the protocol with {tenant.name} ends on {ends}")
        return
    if not (args.signed and args.effective):
        raise InvalidInput("give --signed and --effective (or --notice to end a protocol)")
    effective = _date(args.effective, "--effective")
    app.protocols.register(operator(), tenant, signed=_date(args.signed, "--signed"), effective=effective,
                           reference=args.reference)
    print(f"protocol registered for {tenant.name}: in force from {effective}")


def add_user_commands(commands: Any, command: Any) -> None:
    user = commands.add_parser("user", help="people and scripts that log in").add_subparsers(
        dest="user_command", required=True, metavar="ACTION")
    add = command(user, "add", cmd_user_add, "add a user",
                  "Add a sender (agency staff or script; no tenant) or a recipient (municipal staff; "
                  "exactly one --tenant). Give SSH public keys with --key, and/or a password on stdin.")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", choices=("sender", "recipient"), required=True)
    add.add_argument("--tenant", metavar="T", help="the recipient's municipality")
    add.add_argument("--key", action="append", default=[], type=Path, metavar="PUBFILE",
                     help="OpenSSH public key file; repeat for more")
    add.add_argument("--password-stdin", action="store_true", help="read a password from standard input")
    add.add_argument("--email", metavar="ADDR", help="where expiry notices and signed receipts for a sender go")
    add.add_argument("--function", default="", metavar="TEXT",
                     help="the person's function, why they need access (protocol art. 4 function profiles)")
    change = command(user, "set", cmd_user_set, "change a user's function description")
    change.add_argument("name", metavar="NAME")
    change.add_argument("--function", required=True, metavar="TEXT", help="the function profile (art. 4)")
    listing = command(user, "list", cmd_user_list, "list users")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    review = command(user, "review", cmd_user_review, "accounts to review: unused, old or expired keys, no function",
                     "List active accounts unused for --unused-days (last login from the audit log), keys that "
                     "expired or are older than --key-age-days, and users without a function description.")
    review.add_argument("--unused-days", type=int, default=90, metavar="N", help="default 90")
    review.add_argument("--key-age-days", type=int, default=365, metavar="N", help="default 365")
    review.add_argument("--all", action="store_true", help="include disabled accounts")
    review.add_argument("--json", action="store_true", help="machine-readable output")
    disable = command(user, "disable", cmd_user_disable, "disable a user (logins refused from now on)")
    disable.add_argument("name", metavar="NAME")
    key = user.add_parser("key", help="add or remove a user's SSH keys").add_subparsers(
        dest="key_command", required=True, metavar="ACTION")
    for action, func in (("add", cmd_user_key_add), ("remove", cmd_user_key_remove)):
        sub = command(key, action, func, f"{action} the keys in PUBFILE for user NAME")
        sub.add_argument("name", metavar="NAME")
        sub.add_argument("pubfile", type=Path, metavar="PUBFILE")
        if action == "add":
            sub.add_argument("--expires", metavar="DATE",
                             help="the key no longer logs in from this date (YYYY-MM-DD, 00:00 UTC) on")


def _read_key(path: Path) -> tuple[str, str]:
    try:
        return path.read_text(), str(path)
    except OSError as exc:
        raise InvalidInput(f"cannot read key file {path}: {exc.strerror}") from None


def cmd_user_add(args: Any) -> None:
    app = open_app(args)
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if len(password) < 12:
            raise InvalidInput("passwords must be at least 12 characters; keys are better")
    user = app.directory.add_user(operator(), args.name, role=args.role, tenant=args.tenant,
                                  keys=[_read_key(p) for p in args.key], password=password,
                                  function=args.function, email=args.email)
    if not args.function:
        print(f"warning: {user.name} has no function description; add one: sluis user set {user.name} --function ...",
              file=sys.stderr)
    print(f"added {user.role} {user.name}" + (f" for {args.tenant}" if args.tenant else ""))


def cmd_user_list(args: Any) -> None:
    app = open_app(args)
    users = app.directory.users()
    tenants: dict[int | None, str] = {t.id: t.name for t in app.directory.tenants()}
    rows: list[dict[str, Any]] = [
            {"name": u.name, "role": u.role, "tenant": tenants.get(u.tenant_id), "active": u.active,
             "function": u.function, "keys": [k.fingerprint for k in app.directory.keys(u)],
             "key_expiry": {k.fingerprint: k.expires_at for k in app.directory.keys(u) if k.expires_at},
             "password": u.password_hash is not None}
            for u in users]
    if args.json:
        print_json(rows)
        return
    print_table(["NAME", "ROLE", "TENANT", "ACTIVE", "KEYS", "PASSWORD", "FUNCTION"],
                [(r["name"], r["role"], r["tenant"], "yes" if r["active"] else "no", len(r["keys"]),
                  "yes" if r["password"] else "no", r["function"] or "-") for r in rows])


def cmd_user_set(args: Any) -> None:
    user = open_app(args).directory.set_user(operator(), args.name, function=args.function)
    print(f"updated user {user.name}")


def cmd_user_review(args: Any) -> int:
    if args.unused_days < 1 or args.key_age_days < 1:
        raise InvalidInput("--unused-days and --key-age-days take a number of days of at least 1")
    rows = open_app(args).review.run(unused_days=args.unused_days, key_age_days=args.key_age_days,
                                     include_disabled=args.all)
    if args.json:
        print_json([r.as_dict() for r in rows])
        return 0
    if not rows:
        print("nothing to review")
    for row in rows:
        print(f"{row.user} ({row.role}{', ' + row.tenant if row.tenant else ''}"
              f"{'' if row.active else ', disabled'}): last login {row.last_login or 'never'}")
        for finding in row.findings:
            print(f"    {finding}")
    return 0


def cmd_user_disable(args: Any) -> None:
    open_app(args).directory.disable_user(operator(), args.name)
    print(f"disabled user {args.name}")


def cmd_user_key_add(args: Any) -> None:
    expires = _moment(args.expires, "--expires") if args.expires else None
    added = open_app(args).directory.add_key(operator(), args.name, *_read_key(args.pubfile), expires=expires)
    print(f"added {', '.join(added)} to {args.name}" + (f", valid until {args.expires}" if expires else ""))


def cmd_user_key_remove(args: Any) -> None:
    removed = open_app(args).directory.remove_key(operator(), args.name, *_read_key(args.pubfile))
    print(f"removed {', '.join(removed)} from {args.name}")
