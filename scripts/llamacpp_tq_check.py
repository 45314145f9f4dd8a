#!/usr/bin/env python3
"""hbit against upstream llama.cpp's TQ1_0 / TQ2_0, both ways, on one trained b1.58 model.

For a SwiGLU BitNet b1.58 a8 checkpoint MODEL this script
  1. exports it with hbit as TQ1_0, TQ2_0 and F16 GGUF files;
  2. has llama.cpp's own `llama-quantize` turn the F16 file into TQ1_0 and TQ2_0 (the
     embedding, which llama.cpp's `bitnet` architecture also uses as the head, kept at F16);
  3. for each of the four TQ files, starts llama.cpp's `llama-server` on loopback and compares
     its 32 greedy tokens on fixed prompts with `hbit generate --greedy`; where they part, it
     prints llama.cpp's two best candidates there, to tell a near-tie from a different network;
     then, teacher-forced, gives llama.cpp the prompt and hbit's first k tokens for every k and
     counts the positions where its greedy next token is hbit's (a parting does not cascade);
  4. scores the text TEXT with `llama-perplexity -c 256` and with
     `hbit eval ppl --method llama-cpp --context 256` (the same chunks) and prints both.

usage: llamacpp_tq_check.py HBIT LLAMA_BIN_DIR MODEL TEXT OUTDIR [--port N]
Everything it writes goes to OUTDIR. Exits non-zero when a check fails: teacher-forced agreement
below 95% of positions, or perplexities more than 1% apart.
"""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

PROMPTS = [
    "The history of the city",
    "Once upon a time, there was a",
    "In 1905, the railway company",
    "The king said to his son",
    "Water is made of",
]
N_PREDICT = 32


def run(cmd, **kw):
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, text=True, **kw)


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def wait_healthy(port, proc, limit_s=60):
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError("llama-server did not become healthy")


def top_two(entry):
    """llama.cpp's two best candidates at one position, as (token, probability) pairs."""
    cands = entry.get("top_probs") or entry.get("top_logprobs") or entry.get("probs") or []
    out = []
    for c in cands[:2]:
        p = c.get("prob")
        if p is None and "logprob" in c:
            p = pow(2.718281828459045, c["logprob"])
        out.append((c.get("token", c.get("tok_str")), p))
    return out


def forced_agreement(port, prompt, hbit_tokens):
    """Positions k where llama.cpp, given the prompt and hbit's first k tokens, predicts hbit's
    token k; and, where it does not, its two best candidates."""
    ids = post(port, "/tokenize", {"content": prompt, "add_special": True})["tokens"]
    agree, partings = 0, []
    for k, want in enumerate(hbit_tokens):
        r = post(port, "/completion", {"prompt": ids + hbit_tokens[:k], "n_predict": 1,
                                       "temperature": 0, "top_k": 1, "cache_prompt": False,
                                       "n_probs": 2, "post_sampling_probs": False,
                                       "return_tokens": True})
        if r["tokens"][:1] == [want]:
            agree += 1
        else:
            probs = r.get("completion_probabilities", [])
            partings.append((k, top_two(probs[0]) if probs else []))
    return agree, partings


def llama_greedy(server, gguf, port, log, hbit_runs):
    proc = subprocess.Popen(
        [server, "-m", gguf, "-t", "2", "-c", "256", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(port, proc)
        results = []
        for prompt in PROMPTS:
            r = post(
                port,
                "/completion",
                {
                    "prompt": prompt,
                    "n_predict": N_PREDICT,
                    "temperature": 0,
                    "top_k": 1,
                    "cache_prompt": False,
                    "n_probs": 2,
                    "post_sampling_probs": False,
                    "return_tokens": True,
                },
            )
            results.append((r["tokens"], r.get("completion_probabilities", []), r["content"]))
        forced = [forced_agreement(port, p, h["tokens"]) for p, h in zip(PROMPTS, hbit_runs)]
        return results, forced
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def hbit_greedy(hbit, gguf):
    out = []
    for prompt in PROMPTS:
        r = subprocess.run(
            [hbit, "generate", "--model", gguf, "--prompt", prompt, "--max-tokens", str(N_PREDICT),
             "--greedy", "--kv-bits", "16", "--head-bits", "16", "--json"],
            check=True, text=True, capture_output=True,
        )
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def llama_ppl(bin_dir, gguf, text, log, attempts=2):
    # On a busy machine llama-perplexity can exit 0 after its last chunk without printing the
    # final estimate; a second attempt tells that from a real failure.
    for attempt in range(1, attempts + 1):
        r = subprocess.run(
            [os.path.join(bin_dir, "llama-perplexity"), "-m", gguf, "-f", text, "-c", "256", "-b",
             "256", "-t", "2"],
            text=True, capture_output=True,
        )
        log.write(r.stdout + r.stderr)
        m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", r.stdout + r.stderr)
        if m:
            return float(m.group(1)), float(m.group(2))
        print(f"     llama-perplexity on {gguf}: no final estimate (exit {r.returncode}), "
              f"attempt {attempt} of {attempts}", flush=True)
    raise RuntimeError(f"llama-perplexity on {gguf}: no final estimate in {attempts} attempts")


def hbit_ppl(hbit, gguf, text):
    r = subprocess.run(
        [hbit, "eval", "ppl", "--model", gguf, "--data", text, "--context", "256", "--method",
         "llama-cpp", "--kv-bits", "32", "--json"],
        check=True, text=True, capture_output=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    args = sys.argv[1:]
    port = 18097
    if "--port" in args:
        i = args.index("--port")
        port = int(args[i + 1])
        del args[i:i + 2]
    if len(args) != 5:
        sys.exit(__doc__)
    hbit, bin_dir, model, text, outdir = args
    os.makedirs(outdir, exist_ok=True)
    server = os.path.join(bin_dir, "llama-server")
    quantize = os.path.join(bin_dir, "llama-quantize")

    files = {}
    for quant in ["tq1_0", "tq2_0", "f16"]:
        path = os.path.join(outdir, f"hbit-{quant}.gguf")
        run([hbit, "export", "--format", "gguf", "--quant", quant, "--model", model, "--out", path])
        files[f"hbit {quant}"] = path
    for quant in ["TQ1_0", "TQ2_0"]:
        path = os.path.join(outdir, f"llamacpp-{quant.lower()}.gguf")
        with open(os.path.join(outdir, f"quantize-{quant.lower()}.log"), "w") as log:
            run([quantize, "--token-embedding-type", "f16", files["hbit f16"], path, quant, "2"],
                stdout=log, stderr=subprocess.STDOUT)
        files[f"llama.cpp {quant.lower()}"] = path

    failures = 0
    summary = {"greedy": {}, "ppl": {}}
    for label, gguf in files.items():
        if label == "hbit f16":
            continue
        ours = hbit_greedy(hbit, gguf)
        with open(os.path.join(outdir, f"server-{os.path.basename(gguf)}.log"), "w") as log:
            theirs, forced = llama_greedy(server, gguf, port, log, ours)
        equal = 0
        total_forced = sum(a for a, _ in forced)
        for prompt, (agree, partings) in zip(PROMPTS, forced):
            print(f"     {label:18} {prompt!r}: teacher-forced, llama.cpp's next token is hbit's at "
                  f"{agree}/{N_PREDICT} positions; elsewhere its two best: {partings}")
        summary.setdefault("forced", {})[label] = f"{total_forced}/{N_PREDICT * len(PROMPTS)}"
        if total_forced < 0.95 * N_PREDICT * len(PROMPTS):
            failures += 1
        for prompt, (ltoks, lprobs, ltext), h in zip(PROMPTS, theirs, ours):
            htoks = h["tokens"]
            if ltoks == htoks:
                equal += 1
                print(f"ok   {label:18} {prompt!r}: {N_PREDICT} greedy tokens equal")
                continue
            k = next((i for i, (a, b) in enumerate(zip(ltoks, htoks)) if a != b),
                     min(len(ltoks), len(htoks)))
            near = top_two(lprobs[k]) if k < len(lprobs) else []
            print(f"DIFF {label:18} {prompt!r}: part at token {k}; llama.cpp {ltext!r}, hbit "
                  f"{h['text']!r}; llama.cpp's two best there: {near}")
        # Free-running greedy text parts for good at the first near-tie the two engines'
        # arithmetic orders differently, so it is reported; the teacher-forced count decides.
        summary["greedy"][label] = f"{equal}/{len(PROMPTS)}"

    for label, gguf in files.items():
        if label == "hbit f16":
            continue
        with open(os.path.join(outdir, f"perplexity-{os.path.basename(gguf)}.log"), "w") as log:
            lppl, lerr = llama_ppl(bin_dir, gguf, text, log)
        h = hbit_ppl(hbit, gguf, text)
        hppl = h["perplexity"]
        rel = abs(hppl - lppl) / lppl
        ok = rel <= 0.01
        failures += not ok
        summary["ppl"][label] = {"llama.cpp": lppl, "llama.cpp_err": lerr, "hbit": hppl,
                                 "relative_difference": rel, "hbit_bits_per_byte": h.get("bits_per_byte")}
        print(f"{'ok  ' if ok else 'FAIL'} {label:18} perplexity: llama.cpp {lppl:.4f} ± {lerr:.4f}, "
              f"hbit {hppl:.4f} (relative difference {rel:.2e})")

    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
