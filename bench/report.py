"""The medians, ranges and ratios of bench/run.py's rounds, and the markdown tables it prints."""

from __future__ import annotations

import statistics

from clients import Client


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} if xs else {}


def summarise(rounds: list[dict], clients: list[Client]) -> dict:
    out: dict = {}
    for c in clients:
        for op in ("upload", "download"):
            row: dict = {}
            for srv in ("sluis", "openssh"):
                rs = [r[c.name][srv][op] for r in rounds]
                row[srv] = {k: stats([x[k] for x in rs]) for k in rs[0] if k != "timed_out"}
                row[srv]["timed_out"] = sum(x["timed_out"] for x in rs)
            row["ratio"] = {
                "mb_per_s": stats([r[c.name]["sluis"][op]["mb_per_s"] / r[c.name]["openssh"][op]["mb_per_s"]
                                   for r in rounds]),
                "server_cpu_s_per_gib": stats([r[c.name]["sluis"][op]["server_cpu_s_per_gib"]
                                               / r[c.name]["openssh"][op]["server_cpu_s_per_gib"] for r in rounds]),
            }
            out.setdefault(c.name, {})[op] = row
    return out


def rng(s: dict, nd: int = 0) -> str:
    if not s:
        return "–"
    return f"{s['median']:.{nd}f} ({s['min']:.{nd}f}–{s['max']:.{nd}f})"


def markdown(result: dict) -> str:
    meta, summary, extra = result["meta"], result["summary"], result["extras"]
    lines = [
        f"Machine: {meta['cpu_model']}, {meta['cpus']} CPUs, Linux {meta['kernel']}, Python {meta['python']}, "
        f"asyncssh {meta['asyncssh_version']}, {meta['openssh']}, {meta['putty']}; {meta['date']}, "
        f"load average {meta['loadavg_before_after'][0][0]:.1f} before, {meta['loadavg_before_after'][1][0]:.1f} after.",
        f"Medians of {meta['rounds']} interleaved rounds (min–max in brackets), {meta['size_mib']} MiB random file "
        "over loopback; MB/s = 10^6 bytes per second; ratios taken per round, then the median.",
        "",
    ]
    if summary:
        lines += ["| client, cipher | direction | sluis MB/s | OpenSSH sftp-server MB/s | sluis / OpenSSH "
                  "| server CPU s/GiB, sluis | OpenSSH | CPU sluis / OpenSSH | peak RSS MiB, sluis | OpenSSH |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for cname, ops in summary.items():
            label = cname + (f" ({meta['negotiated'].get(cname, '')})" if cname.startswith("PuTTY") else "")
            for op, row in ops.items():
                s, o, r = row["sluis"], row["openssh"], row["ratio"]
                killed = s["timed_out"] + o["timed_out"]
                note = f" ({killed} run{'s' if killed > 1 else ''} killed after {meta['client_timeout_s']:.0f} s)" if killed else ""
                lines.append(
                    f"| {label}{note} | {op} | {rng(s['mb_per_s'])} | {rng(o['mb_per_s'])} | {rng(r['mb_per_s'], 2)} "
                    f"| {s['server_cpu_s_per_gib']['median']:.2f} | {o['server_cpu_s_per_gib']['median']:.2f} "
                    f"| {r['server_cpu_s_per_gib']['median']:.2f} | {s['peak_hwm_mib']['median']:.0f} "
                    f"| {o['peak_hwm_mib']['median']:.0f} |")
        lines.append("")
    lines += ["| measure | sluis | OpenSSH sftp-server | sluis / OpenSSH |", "| --- | ---: | ---: | ---: |"]
    idle = meta["idle_rss_mib"]
    lines.append(f"| idle server RSS, MiB | {idle['sluis']:.1f} | {idle['openssh']:.1f} | "
                 f"{idle['sluis'] / idle['openssh']:.2f} |")
    if "sessions" in extra:
        s, o = extra["sessions"]["sluis"], extra["sessions"]["openssh"]
        lines.append(f"| memory per idle SFTP session ({s['sessions']} held open, PSS), KiB "
                     f"| {s['kib_per_session']:.0f} | {o['kib_per_session']:.0f} "
                     f"| {s['kib_per_session'] / o['kib_per_session']:.3f} |")
    if "logins" in extra:
        s, o = extra["logins"]["sluis"], extra["logins"]["openssh"]
        sm, om = s["server_cpu_ms_per_login"], o["server_cpu_ms_per_login"]
        lines.append(f"| login (connect, auth, `pwd`, exit): server CPU ms, mean of {s['logins']} "
                     f"| {sm:.1f} | {om:.1f} | {sm / om:.2f} |")
    if "concurrent" in extra:
        c = extra["concurrent"]
        s = stats([x["mb_per_s"] for x in c["sluis"]])
        o = stats([x["mb_per_s"] for x in c["openssh"]])
        r = stats([a["mb_per_s"] / b["mb_per_s"] for a, b in zip(c["sluis"], c["openssh"])])
        lines.append(f"| {c['streams']} concurrent downloads of {c['mib_each']} MiB ({c['client']}): aggregate MB/s "
                     f"| {rng(s)} | {rng(o)} | {rng(r, 2)} |")
        sc = stats([x["server_cpu_s_per_gib"] for x in c["sluis"]])
        oc = stats([x["server_cpu_s_per_gib"] for x in c["openssh"]])
        lines.append(f"| {c['streams']} concurrent downloads: server CPU s/GiB | {sc['median']:.2f} "
                     f"| {oc['median']:.2f} | {sc['median'] / oc['median']:.2f} |")
    return "\n".join(lines)
