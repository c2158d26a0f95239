#!/usr/bin/env python3
"""Checks every PromQL expression of the Grafana dashboard with promtool:
they are written out as recording rules ($job -> portcullis) and
`promtool check rules` parses them. Usage: check-dashboard.py DASHBOARD.json"""
import json, os, subprocess, sys, tempfile

def exprs(panels):
    for p in panels:
        yield from exprs(p.get("panels", []))
        for t in p.get("targets", []):
            yield p["title"], t["expr"]

dash = json.load(open(sys.argv[1]))
found = list(exprs(dash["panels"]))
if not found:
    sys.exit("no expressions found")
lines = ["groups:", "  - name: dashboard", "    rules:"]
for i, (title, e) in enumerate(found):
    e = e.replace("$job", "portcullis")
    lines.append(f"      - record: dashboard:expr{i}")
    lines.append("        expr: " + json.dumps(e))
with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
    f.write("\n".join(lines) + "\n")
try:
    r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
finally:
    os.unlink(f.name)
if r.returncode != 0:
    print(r.stdout, r.stderr)
    sys.exit(f"{sys.argv[1]}: a panel's query does not parse")
print(f"{sys.argv[1]}: {len(found)} queries parse")
