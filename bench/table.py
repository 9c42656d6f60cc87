#!/usr/bin/env python3
"""Renders bench/run's results as markdown tables and writes them as JSON.
Usage: table.py RESULTS.jsonl OUT.json QUICK.
Each number is the median over the rounds; each ratio is the median of the per-round ratios
(both taken in the same round, so a slow moment of the machine hits both sides) with their
spread, min–max. Exits 1 when Passerelle produced no number for a workload or only errors
or more than 1 % errors in any round (the harness, or Passerelle, is broken), never because
of a speed."""
import datetime
import json
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
# data[target][workload] = [result of each round]
data = {}
for r in rows:
    data.setdefault(r["target"], {}).setdefault(r["workload"], []).append((r.get("round", 1), r["result"]))
rounds = sorted({r.get("round", 1) for r in rows})


def values(target, workload, key):
    return {rnd: res[key] for rnd, res in data.get(target, {}).get(workload, [])
            if res.get(key) is not None and not failed(res)}


def failed(result):
    # A workload whose every operation failed measured nothing.
    return result.get("ops") == 0 and result.get("errors", 0) > 0


def get(target, workload, key):
    found = list(values(target, workload, key).values())
    return statistics.median(found) if found else None


def fmt(value, digits=0):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def ratio(a, b, workload, key):
    """Median and spread of the per-round ratios of target a to target b."""
    va, vb = values(a, workload, key), values(b, workload, key)
    per_round = [va[r] / vb[r] for r in va if r in vb and vb[r]]
    if not per_round:
        return "—"
    median = statistics.median(per_round)
    if len(per_round) == 1:
        return f"{median:.2f}×"
    return f"{median:.2f}× ({min(per_round):.2f}–{max(per_round):.2f})"


cc = sys.argv[5] if len(sys.argv) > 5 else "unknown"
print(f"Medians over {len(rounds)} round(s), TCP congestion control {cc}.")
print()
order = ["direct", "haproxy", "passerelle", "baseline", "squid", "tinyproxy", "cntlm"]
print("| target | W1 req/s | W1 p50 ms | W1 p99 ms | proxy CPU µs/req | W2 MB/s, 1 tunnel | W2 MB/s, 4 tunnels | W3 tunnels/s | W3 p99 ms | proxy CPU µs/tunnel | W4 KiB/idle tunnel (alive) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for t in order:
    if t not in data:
        continue
    w4 = "—"
    if get(t, "w4", "kib_per_tunnel") is not None:
        w4 = f"{get(t, 'w4', 'kib_per_tunnel'):.1f} ({get(t, 'w4', 'alive')}/{get(t, 'w4', 'ops')})"
    print(f"| {t} | {fmt(get(t, 'w1', 'per_second'))} | {fmt(get(t, 'w1', 'p50_ms'), 2)} | {fmt(get(t, 'w1', 'p99_ms'), 2)} "
          f"| {fmt(get(t, 'w1', 'cpu_us_per_op'), 1)} | {fmt(get(t, 'w2_1', 'mb_per_second'))} | {fmt(get(t, 'w2_4', 'mb_per_second'))} "
          f"| {fmt(get(t, 'w3', 'per_second'))} | {fmt(get(t, 'w3', 'p99_ms'), 2)} | {fmt(get(t, 'w3', 'cpu_us_per_op'), 1)} | {w4} |")

print()
print("| Passerelle vs | W1 req/s | W1 CPU/req (lower is better) | W2 1 tunnel | W2 4 tunnels | W3 tunnels/s |")
print("|---|---|---|---|---|---|")
for peer in ["baseline", "squid", "tinyproxy", "cntlm", "haproxy", "direct"]:
    if peer not in data:
        continue
    cells = [ratio("passerelle", peer, w, k) for w, k in
             [("w1", "per_second"), ("w1", "cpu_us_per_op"), ("w2_1", "mb_per_second"),
              ("w2_4", "mb_per_second"), ("w3", "per_second")]]
    print(f"| {peer} | " + " | ".join(cells) + " |")

if "passerelle-ntlm" in data:
    print()
    print("W6, the authenticated path through a Squid demanding NTLM (Squid's 407s per round, W1 and W3 together):")
    print()
    print("| local proxy | W1 req/s | W1 p99 ms | W3 tunnels/s | W3 p99 ms | Squid 407s |")
    print("|---|---|---|---|---|---|")
    for t in ["passerelle-ntlm", "cntlm-ntlm"]:
        if t in data:
            print(f"| {t} | {fmt(get(t, 'w1', 'per_second'))} | {fmt(get(t, 'w1', 'p99_ms'), 2)} "
                  f"| {fmt(get(t, 'w3', 'per_second'))} | {fmt(get(t, 'w3', 'p99_ms'), 2)} | {fmt(get(t, 'w6', 'squid_407'))} |")
    print()
    print(f"Passerelle vs cntlm through the NTLM Squid: W1 {ratio('passerelle-ntlm', 'cntlm-ntlm', 'w1', 'per_second')}, "
          f"W3 {ratio('passerelle-ntlm', 'cntlm-ntlm', 'w3', 'per_second')}")

w5 = get("parented", "w5", "handshakes")
if w5 is not None:
    (_, w5), = data["parented"]["w5"][-1:]
    hs = w5["handshakes"]
    per = w5["requests_on_authenticated_connections"] / hs if hs else None
    print()
    print(f"W5, through the NTLM parent: {hs} handshakes on {w5['parent_connections']} pooled parent connections "
          f"(one per connection; {w5['client_connections']} client connections); "
          f"{w5['requests_on_authenticated_connections']} forwarded requests rode authenticated connections "
          f"({fmt(per)} per handshake). Fresh tunnel (new parent connection, NTLM each): "
          f"p50 {fmt(get('parented', 'w3', 'p50_ms'), 2)} ms vs {fmt(get('passerelle', 'w3', 'p50_ms'), 2)} ms direct "
          f"({fmt(get('parented', 'w3', 'per_second'))} tunnels/s; the Python parent is the bottleneck).")

w7 = data.get("passerelle-negotiate", {}).get("w7")
if w7 and w7[-1][1].get("after_w1") and w7[-1][1].get("after_w3"):
    a, b = w7[-1][1]["after_w1"], w7[-1][1]["after_w3"]
    forwarded = get("passerelle-negotiate", "w1", "ops")
    tunnels = get("passerelle-negotiate", "w3", "ops")
    per_tunnel = (b["handshakes"] - a["handshakes"]) / tunnels if tunnels else None
    print()
    print(f"W7, Negotiate through Squid checking Kerberos tickets (MIT KDC): {fmt(forwarded)} forwarded requests over 8 "
          f"keep-alive client connections ({fmt(get('passerelle-negotiate', 'w1', 'per_second'))} req/s) took "
          f"{a['handshakes']:.0f} handshakes; {fmt(tunnels)} tunnels, each its own parent connection, took "
          f"{b['handshakes'] - a['handshakes']:.0f} ({fmt(per_tunnel, 2)} per parent connection; "
          f"{fmt(get('passerelle-negotiate', 'w3', 'per_second'))} tunnels/s); the KDC issued {b['service_tickets']} "
          f"service ticket(s) for the parent in all, {b['preauth_failures']} pre-authentication failures.")

json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "quick": sys.argv[3] == "1", "congestion_control": cc,
           "rounds": len(rounds), "results": data},
          open(sys.argv[2], "w"), indent=1)
expected = ["w1", "w2_1", "w2_4", "w3", "w4"]
chosen = sys.argv[4].strip(",").split(",") if len(sys.argv) > 4 and sys.argv[4] else expected
expected = [w for w in expected if w in chosen]
broken = [w for w in expected if get("passerelle", w, "ops") is None]
broken += [f"{t} {w}" for t in ["passerelle-ntlm"] if t in data for w in ["w1", "w3"] if get(t, w, "ops") is None]
# A workload where requests fail measures the failures: more than 1 % errors is a broken run.
MAX_ERROR_FRACTION = 0.01
for t in ["passerelle", "passerelle-ntlm", "parented", "passerelle-negotiate"]:
    for w, results in data.get(t, {}).items():
        for rnd, res in results:
            ops, errors = res.get("ops"), res.get("errors", 0)
            if ops is None or not errors:
                continue
            if errors > MAX_ERROR_FRACTION * (ops + errors):
                broken.append(f"{t} {w} (round {rnd}: {errors} errors for {ops} operations)")
if broken:
    print(f"bench: no Passerelle result, or too many errors, for {', '.join(broken)}", file=sys.stderr)
    sys.exit(1)
