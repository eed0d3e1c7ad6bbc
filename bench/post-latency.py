"""POST /ingest latency with a simple sequential loop (2,000 requests of 10 ids,
one kept-alive connection) against the release binary.
Run `cargo build --release` first, then `python3 bench/post-latency.py`."""
import os
import http.client, json, subprocess, time, tempfile, statistics
d = tempfile.mkdtemp()
proc = subprocess.Popen([os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "sluice"), "serve", "--listen", "127.0.0.1:8932",
                         "--database", f"sqlite://{d}/sluice.db", "--interval", "1h"],
                        stderr=subprocess.DEVNULL)
time.sleep(1.0)
c = http.client.HTTPConnection("127.0.0.1", 8932)
body = json.dumps({"ids": list(range(1, 11)), "priority": "MEDIUM"})
lat = []
for i in range(2000):
    t = time.perf_counter()
    c.request("POST", "/ingest", body, {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 200
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print(f"POST /ingest, 2000 sequential requests of 10 ids: p50 {lat[1000]:.3f} ms, p90 {lat[1800]:.3f} ms, p99 {lat[1980]:.3f} ms")
proc.terminate(); proc.wait()
