"""SPEC.md's reference timeline against the release binary at default settings:
request A at T0, request B at T0+4 s; prints the state at T4 and every start.
Run `cargo build --release` first, then `python3 bench/reference-timeline.py`."""
import http.client, json, subprocess, time, tempfile, os, re, sys

d = tempfile.mkdtemp()
proc = subprocess.Popen([os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "sluice"), "serve", "--listen", "127.0.0.1:8931",
                         "--database", f"sqlite://{d}/sluice.db"], stderr=subprocess.PIPE, text=True)
for line in proc.stderr:
    if "listening on" in line:
        break
def req(method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", 8931)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    c.request(method, path, json.dumps(body) if body is not None else None, headers)
    r = c.getresponse(); data = json.loads(r.read()); c.close(); return data
t0 = time.time()
a = req("POST", "/ingest", {"ids": [1,2,3,4,5], "priority": "MEDIUM"})["ingestion_id"]
time.sleep(4 - (time.time() - t0))
b = req("POST", "/ingest", {"ids": [6,7,8,9], "priority": "HIGH"})["ingestion_id"]
sa, sb = req("GET", f"/status/{a}")["status"], req("GET", f"/status/{b}")["status"]
print(f"T4: A is {sa}, B is {sb}")
while True:
    A, B = req("GET", f"/status/{a}"), req("GET", f"/status/{b}")
    if A["status"] == "completed" and B["status"] == "completed":
        break
    time.sleep(0.2)
from datetime import datetime
def ts(s): return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
created = ts(A["created_at"])
starts = sorted((ts(x["started_at"]), x["ids"], x["scheduled_at"]) for x in A["batches"] + B["batches"])
for t, ids, sched in starts:
    print(f"T+{t - created:8.4f} s  {ids}  (slot T+{ts(sched) - created:.4f} s)")
print(f"both completed at T+{max(ts(A['completed_at']), ts(B['completed_at'])) - created:.4f} s")
proc.terminate(); proc.wait()
