"""Drives a Tollgate dataplane with the official OpenAI Python SDK, sync and async,
non-streaming and streaming. Exits non-zero (with the assertion) on any mismatch.

Usage: openai_client.py BASE_URL API_KEY
"""

import asyncio
import sys

import openai
from openai import AsyncOpenAI, OpenAI


def check_completion(c, model):
    assert c.object == "chat.completion", c
    assert c.model == model, c.model
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == "Mock reply to: hello from python", c.choices[0].message.content
    assert c.choices[0].finish_reason == "stop"
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens > 0


def main(base_url, key):
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "hello from python"}]

    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)
    assert raw.headers["x-tollgate-route"] == "default/chat", raw.headers
    check_completion(raw.parse(), "gpt-4o")

    pieces, usage, chunks = [], None, 0
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream please [mock chunks=20]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        chunks += 1
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert len(pieces) == 20, pieces
    assert "".join(pieces).startswith("Mock reply to: stream please"), pieces
    assert usage is not None and usage.completion_tokens == 20, usage

    models = sorted(m.id for m in client.models.list())
    assert models == ["claude-haiku-4-5", "claude-sonnet-4-5", "gpt-4o", "gpt-4o-mini", "smart", "text-embedding-3-small"], models

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        raise AssertionError("expected a 404")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e.body

    bad = OpenAI(base_url=base_url, api_key="tg-wrong", max_retries=0)
    try:
        bad.chat.completions.create(model="gpt-4o", messages=messages)
        raise AssertionError("expected a 401")
    except openai.AuthenticationError as e:
        assert e.code == "invalid_api_key", e.body

    async def run_async():
        async with AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as aclient:
            c = await aclient.chat.completions.create(model="smart", messages=messages)
            check_completion(c, "gpt-4o")
            text = ""
            async for chunk in await aclient.chat.completions.create(model="smart", messages=messages, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
        assert text == "Mock reply to: hello from python", text

    asyncio.run(run_async())
    print("python openai sdk: ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
