"""Drives a Tollgate dataplane with the official Anthropic Python SDK (sync and async,
streaming and not) on /v1/messages, and with the OpenAI SDK on a Claude model, which the
gateway translates. Exits non-zero on any mismatch.

Usage: anthropic_client.py BASE_URL API_KEY   (BASE_URL without /v1)
"""

import asyncio
import sys

import anthropic
import openai


def main(base_url, key):
    client = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "hello from anthropic"}]

    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=100, messages=messages)
    assert raw.headers["x-tollgate-provider"] == "default/anthropic", raw.headers
    m = raw.parse()
    assert m.type == "message" and m.role == "assistant", m
    assert m.content[0].text == "Mock reply to: hello from anthropic", m.content
    assert m.stop_reason == "end_turn", m.stop_reason
    assert m.usage.output_tokens == 6, m.usage

    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        system="be brief",
        messages=[{"role": "user", "content": "stream [mock chunks=12]"}],
    ) as stream:
        pieces = [text for text in stream.text_stream]
        final = stream.get_final_message()
    assert len(pieces) == 12, pieces
    assert final.usage.output_tokens == 12 and final.stop_reason == "end_turn", final

    try:
        anthropic.Anthropic(base_url=base_url, api_key="tg-wrong", max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=messages
        )
        raise AssertionError("expected a 401")
    except anthropic.AuthenticationError as e:
        assert e.body["error"]["type"] == "authentication_error", e.body

    try:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[])
        raise AssertionError("expected a 400")
    except anthropic.BadRequestError as e:
        assert e.body["error"]["type"] == "invalid_request_error", e.body

    async def run_async():
        async with anthropic.AsyncAnthropic(base_url=base_url, api_key=key, max_retries=0) as aclient:
            m = await aclient.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=messages)
            assert m.content[0].text == "Mock reply to: hello from anthropic"
            text = ""
            async with aclient.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=messages) as s:
                async for t in s.text_stream:
                    text += t
        assert text == "Mock reply to: hello from anthropic", text

    asyncio.run(run_async())

    # The OpenAI SDK on a Claude model: translated both ways.
    oai = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)
    c = oai.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "via openai"}],
    )
    assert c.choices[0].message.content == "Mock reply to: via openai", c
    assert c.choices[0].finish_reason == "stop"
    text, usage = "", None
    for chunk in oai.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "via openai stream [mock chunks=9]"}],
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text.startswith("Mock reply to: via openai stream"), text
    assert usage is not None and usage.completion_tokens == 9, usage
    try:
        oai.chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}], n=2
        )
        raise AssertionError("expected a 400")
    except openai.BadRequestError as e:
        assert "n:" in e.message, e.message
    print("python anthropic sdk: ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
