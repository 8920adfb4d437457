import time, http.client, sys, threading
port = int(sys.argv[1]); dur = float(sys.argv[2]); K = "bbkey-0123456789abcdef-1"
out = []; lk = threading.Lock()
def w():
    t_end = time.time() + dur
    while time.time() < t_end:
        t = time.time()
        try:
            h = http.client.HTTPConnection("127.0.0.1", port, timeout=10); h.request("GET", "/x", headers={"x-api-key": K}); r = h.getresponse(); r.read(); st = r.status
        except Exception as e: st = str(e)[:30]
        with lk: out.append((st, round(time.time()-t, 3), round(t, 1)))
ths = [threading.Thread(target=w) for _ in range(int(sys.argv[3]) if len(sys.argv) > 3 else 1)]; [x.start() for x in ths]; [x.join() for x in ths]
print(len(out), "requests; statuses", {s: sum(1 for x, _, _ in out if x == s) for s in set(x for x, _, _ in out)})
print("max", max(l for _, l, _ in out), "n>0.5s", sum(1 for _, l, _ in out if l > 0.5), "median", sorted(l for _, l, _ in out)[len(out)//2])
print("slow ones", [(s, l) for s, l, _ in out if l > 0.5][:10])
