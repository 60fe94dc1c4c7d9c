#!/usr/bin/env python3
"""Prepares the HTTP load benchmark: fetches every demo employee once from
query-api, webdis and nginx (static copies written here), and writes wrk Lua
scripts that request random ids, plainly (200) or with the matching
If-None-Match (304). Usage: prepare.py QUERY_PORT WEBDIS_PORT NGINX_PORT STATIC_DIR OUT_DIR N"""
import http.client, json, os, sys

# query-api is read with the demo's hr token (every field, like webdis's
# HGETALL and nginx's copy of the same body).
TOKEN = os.environ.get("BENCH_TOKEN", "demo-hr-token")

qport, wport, nport, static_dir, out, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
ids = ["E%06d" % i for i in range(1, n + 1)]
os.makedirs(static_dir, exist_ok=True)

def fetch_all(port, path_of, headers={}):
    con = http.client.HTTPConnection("127.0.0.1", int(port))
    tags = {}
    for i in ids:
        con.request("GET", path_of(i), headers=headers)
        r = con.getresponse()
        body = r.read()
        assert r.status == 200, (port, i, r.status)
        tags[i] = (r.getheader("ETag"), body)
    return tags

auth = {"Authorization": "Bearer " + TOKEN} if TOKEN else {}
q = fetch_all(qport, lambda i: "/v1/employees/" + i, auth)
for i, (_, body) in q.items():
    with open(os.path.join(static_dir, i + ".json"), "wb") as f:
        f.write(body)
w = fetch_all(wport, lambda i: "/HGETALL/fc:g1:employees:" + i)
g = fetch_all(nport, lambda i: "/" + i + ".json")

def lua(name, path_fmt, tags, headers={}):
    with open(os.path.join(out, name + ".lua"), "w") as f:
        f.write("local ids = {%s}\n" % ",".join('"%s"' % i for i in ids))
        if tags is not None:
            f.write("local tags = {%s}\n" % ",".join("[%s]=%s" % (json.dumps(i), json.dumps(tags[i][0])) for i in ids))
        f.write("math.randomseed(42)\n")
        f.write("request = function()\n  local id = ids[math.random(#ids)]\n")
        f.write('  local path = string.format("%s", id)\n' % path_fmt)
        hs = ", ".join("[%s] = %s" % (json.dumps(k), json.dumps(v)) for k, v in headers.items())
        if tags is not None:
            hs = (hs + ", " if hs else "") + '["If-None-Match"] = tags[id]'
        f.write('  return wrk.format("GET", path, {%s})\n' % hs)
        f.write("end\n")

lua("query_200", "/v1/employees/%s", None, auth)
lua("query_304", "/v1/employees/%s", q, auth)
lua("webdis_200", "/HGETALL/fc:g1:employees:%s", None)
lua("webdis_304", "/HGETALL/fc:g1:employees:%s", w)
lua("nginx_200", "/%s.json", None)
lua("nginx_304", "/%s.json", g)
print("prepared %d ids; sample ETags: query %s webdis %s nginx %s" % (n, q[ids[0]][0], w[ids[0]][0], g[ids[0]][0]))
