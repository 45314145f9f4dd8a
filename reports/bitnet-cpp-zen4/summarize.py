import json, glob, statistics as st, sys, os
d = sys.argv[1]
rows = {}
def add(key, pp, tg):
    rows.setdefault(key, {"pp": [], "tg": []})
    rows[key]["pp"].append(pp); rows[key]["tg"].append(tg)
for f in sorted(glob.glob(os.path.join(d, "bitnetcpp-*.jsonl"))):
    name = os.path.basename(f).split("-r")[0].replace("bitnetcpp-", "")
    pp = tg = None
    for line in open(f):
        r = json.loads(line)
        if r["n_gen"] == 0: pp = r["avg_ts"]
        else: tg = r["avg_ts"]
    add("bitnet.cpp " + name, pp, tg)
for f in sorted(glob.glob(os.path.join(d, "hbit-*.jsonl"))):
    for line in open(f):
        r = json.loads(line)
        if "shape" not in r: continue
        key = f"hbit {r['shape']} a{r['act_bits']} head {r['head']}"
        add(key, r["prefill_tok_s_median"], r["decode_tok_s_median"])
print("| engine, model | rounds | prefill t/s median (min–max) | decode t/s median (min–max) |")
print("|---|---|---|---|")
for k in sorted(rows):
    v = rows[k]
    f = lambda xs: f"{st.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})"
    print(f"| {k} | {len(v['tg'])} | {f(v['pp'])} | {f(v['tg'])} |")
