#!/usr/bin/env python3
"""Drives an `hbit serve` with the real `openai` Python client (PyPI): completions and chat,
whole and streamed, at temperature 0. Checks that the streamed text equals the whole answer,
that usage is reported, and that the server's errors arrive as the client's exception types.

Usage: python3 scripts/openai_client_check.py http://127.0.0.1:PORT/v1 [API_KEY]
"""

import sys

import openai
from openai import OpenAI


def main() -> int:
    base_url = sys.argv[1]
    client = OpenAI(base_url=base_url, api_key=sys.argv[2] if len(sys.argv) > 2 else "none",
                    max_retries=0, timeout=120)
    models = client.models.list()
    model = models.data[0].id
    print(f"model: {model}")

    whole = client.completions.create(model=model, prompt="Once upon a time", max_tokens=24,
                                      temperature=0)
    text = whole.choices[0].text
    assert whole.usage.completion_tokens > 0, whole
    streamed = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(model=model, prompt="Once upon a time",
                                               max_tokens=24, temperature=0, stream=True)
        if chunk.choices
    )
    assert streamed == text, (streamed, text)
    print(f"completions: {text!r} ({whole.usage.completion_tokens} tokens), stream equal")

    messages = [{"role": "system", "content": "You tell short stories."},
                {"role": "user", "content": "Tell me about a cat."}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=24,
                                          temperature=0)
    answer = chat.choices[0].message.content
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length"), chat
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=24,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    pieces, usage, roles = [], None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            pieces.append(choice.delta.content or "")
    assert "".join(pieces) == answer, ("".join(pieces), answer)
    assert roles == ["assistant"], roles
    assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage
    print(f"chat: {answer!r} ({chat.usage.completion_tokens} tokens), stream equal, usage sent")

    try:
        client.completions.create(model=model, prompt="x", max_tokens=-3)
        raise AssertionError("a negative max_tokens was accepted")
    except openai.BadRequestError as e:
        assert "max_tokens" in str(e), e
    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError:
        pass
    print("errors: 400 and 404 arrive as BadRequestError and NotFoundError")
    return 0


if __name__ == "__main__":
    sys.exit(main())
