#!/usr/bin/env python3
"""Render golden chat-template outputs exactly the way HF transformers'
apply_chat_template(tokenize=False) does.

Environment mirrors transformers/utils/chat_template_utils.py::_compile_jinja_template:
  ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                extensions=[AssistantTracker, jinja2.ext.loopcontrols])
  filters["tojson"]          = json.dumps(..., ensure_ascii=False, indent=..., separators=..., sort_keys=...)
  globals["raise_exception"] = raises jinja2.exceptions.TemplateError
  globals["strftime_now"]    = datetime.now().strftime(fmt)   -- here pinned to 2024-07-26
(AssistantTracker only adds the {% generation %} tag; none of these templates use it.)

render_jinja_template() in transformers calls
  template.render(messages=..., tools=None, documents=None,
                  add_generation_prompt=..., **special_tokens_map)
so we render both with and without tools=None/documents=None and assert
they agree (they do for these templates).

Usage: python3 make_goldens.py  [dir]   (dir defaults to this script's folder)
Writes <dir>/goldens.json. Requires jinja2>=3.1.
"""

import datetime
import json
import os
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

FIXED_NOW = datetime.datetime(2024, 7, 26)  # strftime_now("%d %b %Y") -> "26 Jul 2024"


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # HF overrides jinja's tojson (which HTML-escapes and sorts keys)
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return FIXED_NOW.strftime(format)


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


# template file -> (bos_token, eos_token) as in the model's tokenizer_config.json
TEMPLATES = {
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    # meta-llama/Llama-3.1-8B-Instruct
    "llama3_1": ("<|begin_of_text|>", "<|eot_id|>"),
    # meta-llama/Llama-3.2-3B-Instruct (1B-Instruct ships the same template)
    "llama3_2": ("<|begin_of_text|>", "<|eot_id|>"),
    # microsoft/bitnet-b1.58-2B-4T -- the template references neither token,
    # so these values do not affect the output (eos not verified, see SOURCES.md)
    "bitnet_2b4t": ("<|begin_of_text|>", "<|end_of_text|>"),
}

C2 = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "  And 3+3?  "},
]
CONVERSATIONS = {
    "C1": ([{"role": "user", "content": "Hello!"}], True),
    "C2": (C2, True),
    "C3": (C2[:-1], False),
}


def main():
    here = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    env = make_env()
    goldens = {}
    for name, (bos, eos) in TEMPLATES.items():
        with open(os.path.join(here, name + ".jinja"), encoding="utf-8", newline="") as f:
            source = f.read()
        template = env.from_string(source)
        goldens[name] = {}
        for cname, (messages, agp) in CONVERSATIONS.items():
            # deep-copy messages: templates may not mutate them (sandbox is immutable) but be safe
            msgs = json.loads(json.dumps(messages))
            plain = template.render(messages=msgs, bos_token=bos, eos_token=eos, add_generation_prompt=agp)
            hf_like = template.render(
                messages=msgs, tools=None, documents=None, bos_token=bos, eos_token=eos, add_generation_prompt=agp
            )
            assert plain == hf_like, (name, cname)
            goldens[name][cname] = plain
    out = os.path.join(here, "goldens.json")
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        json.dump(goldens, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print("wrote", out, "jinja2", jinja2.__version__)

    # Extra: with strftime_now pinned to 26 Jul 2024 the Llama 3.2 output is
    # indistinguishable from the template's own fallback ("26 Jul 2024" when
    # strftime_now is undefined). These two cases tell the paths apart.
    extra = {}
    src32 = open(os.path.join(here, "llama3_2.jinja"), encoding="utf-8", newline="").read()
    msgs, agp = CONVERSATIONS["C1"]
    env2 = make_env()
    env2.globals["strftime_now"] = lambda fmt: datetime.datetime(2025, 1, 2).strftime(fmt)
    extra["llama3_2_C1_strftime_2025-01-02"] = env2.from_string(src32).render(
        messages=msgs, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", add_generation_prompt=agp)
    env3 = make_env()
    del env3.globals["strftime_now"]
    extra["llama3_2_C1_no_strftime_now"] = env3.from_string(src32).render(
        messages=msgs, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", add_generation_prompt=agp)
    extra["llama3_2_C1_date_string_kwarg_01_Feb_2025"] = env.from_string(src32).render(
        messages=msgs, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", add_generation_prompt=agp,
        date_string="01 Feb 2025")
    out2 = os.path.join(here, "goldens_extra.json")
    with open(out2, "w", encoding="utf-8", newline="\n") as f:
        json.dump(extra, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print("wrote", out2)


if __name__ == "__main__":
    main()
