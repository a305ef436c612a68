"""Drives streams that need the gateway's help with the official OpenAI Python SDK:

- model "continued": the first target's stream breaks half way; the route continues it on
  the next target, and the SDK must see one whole, well-formed stream;
- model "patient": the provider is slow to send its first byte; the gateway sends SSE
  keep-alive comments meanwhile, which the SDK must pass over.

Exits non-zero (with the assertion) on any mismatch.

Usage: streams_client.py BASE_URL API_KEY
"""

import asyncio
import sys

from openai import AsyncOpenAI, OpenAI

# mock-llm answers "Mock reply to: <words>", padded with " more" to the 10 chunks its
# fault rules ask for.
EXPECTED = "Mock reply to: continue this please" + " more" * 4


def check_chunks(chunks, expected):
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == expected, repr(content)
    ids = {c.id for c in chunks}
    assert len(ids) == 1, ids
    roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant"], roles
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"], finishes


def main(base_url, key):
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "continue this please"}]

    # Iterating the stream.
    stream = client.chat.completions.create(model="continued", messages=messages, stream=True)
    check_chunks(list(stream), EXPECTED)

    # The SDK's accumulating helper builds the same final message.
    with client.chat.completions.stream(model="continued", messages=messages) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == EXPECTED, final.choices[0].message.content
    assert final.choices[0].finish_reason == "stop"

    # Async, with usage asked for: the usage chunk comes at the end, once.
    async def run_async():
        async with AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as aclient:
            chunks = []
            stream = await aclient.chat.completions.create(
                model="continued",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                chunks.append(chunk)
            usage = [c.usage for c in chunks if c.usage]
            assert len(usage) == 1 and usage[0].completion_tokens > 0, usage
            check_chunks(chunks, EXPECTED)

    asyncio.run(run_async())

    # Keep-alive comments while the first byte is slow to come.
    stream = client.chat.completions.create(
        model="patient",
        messages=[{"role": "user", "content": "take your time"}],
        stream=True,
    )
    content = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert content == "Mock reply to: take your time", repr(content)

    print("streams ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
