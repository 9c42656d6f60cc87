#!/usr/bin/env python3
"""Renders bench/run's results as a markdown table (with ratios) and writes them as JSON.
Usage: table.py RESULTS.jsonl OUT.json QUICK. Exits 1 when Passerelle produced no number
for a workload (the harness is broken), never because of a speed."""
import datetime
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
data = {}
for r in rows:
    data.setdefault(r["target"], {})[r["workload"]] = r["result"]


def get(target, workload, key):
    value = data.get(target, {}).get(workload, {}).get(key)
    return value


def fmt(value, digits=0):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


order = ["direct", "haproxy", "passerelle", "squid", "tinyproxy", "cntlm"]
print("| target | W1 req/s | W1 p50 ms | W1 p99 ms | proxy CPU µs/req | W2 MB/s, 1 tunnel | W2 MB/s, 4 tunnels | W3 tunnels/s | W3 p99 ms | W4 KiB/idle tunnel (alive) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for t in order:
    if t not in data:
        continue
    w4 = "—"
    if get(t, "w4", "kib_per_tunnel") is not None:
        w4 = f"{get(t, 'w4', 'kib_per_tunnel'):.1f} ({get(t, 'w4', 'alive')}/{get(t, 'w4', 'ops')})"
    print(f"| {t} | {fmt(get(t, 'w1', 'per_second'))} | {fmt(get(t, 'w1', 'p50_ms'), 2)} | {fmt(get(t, 'w1', 'p99_ms'), 2)} "
          f"| {fmt(get(t, 'w1', 'cpu_us_per_op'), 1)} | {fmt(get(t, 'w2_1', 'mb_per_second'))} | {fmt(get(t, 'w2_4', 'mb_per_second'))} "
          f"| {fmt(get(t, 'w3', 'per_second'))} | {fmt(get(t, 'w3', 'p99_ms'), 2)} | {w4} |")


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "—"


print()
print("| Passerelle vs | W1 req/s | W2 1 tunnel | W2 4 tunnels | W3 tunnels/s |")
print("|---|---|---|---|---|")
for peer in ["squid", "tinyproxy", "cntlm", "haproxy", "direct"]:
    if peer not in data:
        continue
    cells = [ratio(get("passerelle", w, k), get(peer, w, k)) for w, k in
             [("w1", "per_second"), ("w2_1", "mb_per_second"), ("w2_4", "mb_per_second"), ("w3", "per_second")]]
    print(f"| {peer} | " + " | ".join(cells) + " |")

w5 = data.get("parented", {}).get("w5")
if w5:
    hs = w5["handshakes"]
    per = w5["requests_on_authenticated_connections"] / hs if hs else None
    print()
    print(f"W5, through the NTLM parent: {hs} handshakes on {w5['parent_connections']} pooled parent connections "
          f"(one per connection; {w5['client_connections']} client connections); "
          f"{w5['requests_on_authenticated_connections']} forwarded requests rode authenticated connections "
          f"({fmt(per)} per handshake). Fresh tunnel (new parent connection, NTLM each): "
          f"p50 {fmt(get('parented', 'w3', 'p50_ms'), 2)} ms vs {fmt(get('passerelle', 'w3', 'p50_ms'), 2)} ms direct "
          f"({fmt(get('parented', 'w3', 'per_second'))} tunnels/s; the Python parent is the bottleneck).")

json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "quick": sys.argv[3] == "1", "results": data},
          open(sys.argv[2], "w"), indent=1)
missing = [w for w in ["w1", "w2_1", "w2_4", "w3", "w4"] if w not in data.get("passerelle", {})]
if missing:
    print(f"bench: no Passerelle result for {', '.join(missing)}", file=sys.stderr)
    sys.exit(1)
