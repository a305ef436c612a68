"""Drives a Tollgate dataplane with the official OpenAI and Anthropic Python SDKs (sync and
async, streaming and not, and a tool-call round trip) against a model of every provider
type, each behind mock-llm in its own wire format; embeddings with the OpenAI SDK and token
counting with the Anthropic SDK on every provider type that offers them. Exits non-zero on
any mismatch.

Usage: providers_client.py BASE_URL API_KEY   (BASE_URL without /v1)
"""

import asyncio
import json
import sys

import anthropic
import openai

# model asked for -> provider that must serve it (x-tollgate-provider)
MODELS = {
    "smart": "default/openai-primary",
    "azure-gpt": "default/azure",
    "vllm-llama": "default/vllm",
    "claude-sonnet-4-5": "default/anthropic",
    "gemini-2.5-flash": "default/gemini",
    "vertex-gemini": "default/vertex",
    "vertex-claude": "default/vertex",
    "bedrock-claude": "default/bedrock",
    "bedrock-nova": "default/bedrock-apikey",
}

WEATHER_OPENAI = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
WEATHER_ANTHROPIC = [{
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]


def openai_checks(client, model, provider):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    )
    assert raw.headers["x-tollgate-provider"] == provider, (model, raw.headers)
    r = raw.parse()
    assert r.choices[0].message.content == "Mock reply to: hello there", (model, r)
    assert r.choices[0].finish_reason == "stop", (model, r)
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens == 5, (model, r.usage)

    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "stream me"}], stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == "Mock reply to: stream me", (model, text)
    assert finish == "stop" and usage and usage.completion_tokens == 5, (model, finish, usage)

    # Tool-call round trip: the model calls the tool, the result goes back, the answer quotes it.
    messages = [{"role": "user", "content": "weather in Paris?"}]
    r = client.chat.completions.create(model=model, messages=messages, tools=WEATHER_OPENAI)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls", (model, r)
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}, (model, call)
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny 21C"},
    ]
    r = client.chat.completions.create(model=model, messages=messages, tools=WEATHER_OPENAI)
    assert r.choices[0].message.content == "Mock reply to: tool result: sunny 21C", (model, r)

    # Streamed tool call: arguments arrive as deltas and add up.
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "weather?"}], tools=WEATHER_OPENAI, stream=True
    )
    name, args, finish = None, "", None
    for chunk in stream:
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                name = tc.function.name or name
                args += tc.function.arguments or ""
            finish = c.finish_reason or finish
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"} and finish == "tool_calls", (model, name, args, finish)


def anthropic_checks(client, model, provider):
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hello there"}]
    )
    assert raw.headers["x-tollgate-provider"] == provider, (model, raw.headers)
    m = raw.parse()
    assert m.content[0].text == "Mock reply to: hello there", (model, m)
    assert m.stop_reason == "end_turn" and m.usage.output_tokens == 5, (model, m)

    with client.messages.stream(model=model, max_tokens=100, messages=[{"role": "user", "content": "stream me"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Mock reply to: stream me", (model, text)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5, (model, final)

    messages = [{"role": "user", "content": "weather in Paris?"}]
    m = client.messages.create(model=model, max_tokens=100, messages=messages, tools=WEATHER_ANTHROPIC)
    assert m.stop_reason == "tool_use", (model, m)
    use = next(b for b in m.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Paris"}, (model, use)
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny 21C"}]},
    ]
    m = client.messages.create(model=model, max_tokens=100, messages=messages, tools=WEATHER_ANTHROPIC)
    assert m.content[0].text == "Mock reply to: tool result: sunny 21C", (model, m)

    with client.messages.stream(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "weather?"}], tools=WEATHER_ANTHROPIC
    ) as s:
        final = s.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.input == {"city": "Paris"} and final.stop_reason == "tool_use", (model, final)


async def async_checks(base_url, key, model):
    # Clients are closed inside the event loop that opened them.
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0) as oc:
        r = await oc.chat.completions.create(model=model, messages=[{"role": "user", "content": "async hi"}])
        assert r.choices[0].message.content == "Mock reply to: async hi", (model, r)
        stream = await oc.chat.completions.create(model=model, messages=[{"role": "user", "content": "async stream"}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Mock reply to: async stream", (model, text)
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key=key, max_retries=0) as ac:
        m = await ac.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": "async hi"}])
        assert m.content[0].text == "Mock reply to: async hi", (model, m)
        async with ac.messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": "async stream"}]) as s:
            text = "".join([t async for t in s.text_stream])
        assert text == "Mock reply to: async stream", (model, text)


# embedding model asked for -> provider; every provider's mock embeds a text to the same vector
EMBEDDING_MODELS = {
    "embed-openai": "default/openai-primary",
    "embed-azure": "default/azure",
    "gemini-embedding-001": "default/gemini",
    "embed-vertex": "default/vertex",
    "embed-titan": "default/bedrock",
}
# models whose provider can count tokens
COUNTING_MODELS = ["claude-sonnet-4-5", "vertex-claude", "gemini-2.5-flash", "vertex-gemini", "bedrock-claude", "bedrock-nova"]


def embedding_checks(base_url, key):
    oc = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)
    texts = ["the quick brown fox", "jumps"]
    seen = {}
    for model, provider in EMBEDDING_MODELS.items():
        # The SDK asks for base64 and decodes it; floats are asked for explicitly.
        raw = oc.embeddings.with_raw_response.create(model=model, input=texts, dimensions=256)
        assert raw.headers["x-tollgate-provider"] == provider, (model, raw.headers)
        r = raw.parse()
        floats = oc.embeddings.create(model=model, input=texts, dimensions=256, encoding_format="float")
        assert [d.embedding for d in r.data] == [d.embedding for d in floats.data], model
        assert [d.index for d in r.data] == [0, 1] and all(len(d.embedding) == 256 for d in r.data), (model, r)
        seen[model] = [d.embedding for d in r.data]
    first = next(iter(seen.values()))
    assert all(v == first for v in seen.values()), "vectors differ between providers"
    cohere = oc.embeddings.create(model="embed-cohere", input=texts)
    titan = oc.embeddings.create(model="embed-titan", input=texts)
    assert [d.embedding for d in cohere.data] == [d.embedding for d in titan.data]

    async def run():
        async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0) as ac:
            r = await ac.embeddings.create(model="embed-vertex", input="jumps", dimensions=256)
        assert r.data[0].embedding == first[1] and r.usage.prompt_tokens == 1, r
    asyncio.run(run())
    try:
        oc.embeddings.create(model="vertex-claude", input="x")
        raise AssertionError("expected a 400")
    except openai.BadRequestError as e:
        assert "no embeddings API" in e.body["message"], e.body


PERSON = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": {
        "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "additionalProperties": False}},
}


def json_mode_checks(base_url, key):
    """JSON mode on models whose provider has none (Claude, Bedrock): asked for through a
    forced tool, answered as plain content, streamed as content deltas."""
    oc = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "a person, as JSON"}]
    for model in ["claude-sonnet-4-5", "vertex-claude", "bedrock-claude", "bedrock-nova"]:
        r = oc.chat.completions.create(model=model, messages=messages, response_format=PERSON)
        choice = r.choices[0]
        assert choice.finish_reason == "stop" and not choice.message.tool_calls, (model, r)
        assert json.loads(choice.message.content) == {"name": "Paris"}, (model, r)
        r = oc.chat.completions.create(model=model, messages=messages, response_format={"type": "json_object"})
        assert isinstance(json.loads(r.choices[0].message.content), dict), (model, r)
        stream = oc.chat.completions.create(model=model, messages=messages, response_format=PERSON, stream=True)
        text, finish = "", None
        for chunk in stream:
            for c in chunk.choices:
                assert not c.delta.tool_calls, (model, chunk)
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        assert json.loads(text) == {"name": "Paris"} and finish == "stop", (model, text, finish)
        try:
            oc.chat.completions.create(model=model, messages=messages, response_format=PERSON, tools=WEATHER_OPENAI)
            raise AssertionError("expected a 400")
        except openai.BadRequestError as e:
            assert "cannot be combined with tools" in e.body["message"], e.body


def thinking_checks(base_url, key):
    """Claude's extended thinking on Bedrock for Anthropic clients: thinking blocks come back
    with their signatures (JSON and stream), and go back in the history, where the provider
    checks the signature."""
    ac = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    messages = [{"role": "user", "content": "think first"}]
    m = ac.messages.create(model="bedrock-claude", max_tokens=2048, thinking=thinking, messages=messages)
    assert [b.type for b in m.content] == ["thinking", "text"], m
    assert m.content[0].thinking == "Mock thinking about: think first" and m.content[0].signature, m
    with ac.messages.stream(model="bedrock-claude", max_tokens=2048, thinking=thinking, messages=messages) as s:
        final = s.get_final_message()
    assert final.content[0].type == "thinking" and final.content[0].signature == m.content[0].signature, final
    assert final.content[0].thinking == m.content[0].thinking, final
    assert final.content[1].text == "Mock reply to: think first", final
    history = messages + [{"role": "assistant", "content": [b.model_dump() for b in m.content]},
                          {"role": "user", "content": "and now?"}]
    m2 = ac.messages.create(model="bedrock-claude", max_tokens=2048, thinking=thinking, messages=history)
    assert m2.content[-1].text == "Mock reply to: and now?", m2
    history[1]["content"][0]["signature"] = "forged"
    try:
        ac.messages.create(model="bedrock-claude", max_tokens=2048, thinking=thinking, messages=history)
        raise AssertionError("expected a 400 for a forged signature")
    except anthropic.BadRequestError as e:
        assert "signature" in e.body["error"]["message"], e.body


def count_checks(base_url, key):
    ac = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "weather in Paris?"}]
    for model in COUNTING_MODELS:
        count = ac.messages.count_tokens(model=model, system="be brief", messages=messages, tools=WEATHER_ANTHROPIC)
        m = ac.messages.create(model=model, max_tokens=100, system="be brief", messages=messages, tools=WEATHER_ANTHROPIC)
        assert count.input_tokens == m.usage.input_tokens > 0, (model, count, m.usage)

    async def run():
        async with anthropic.AsyncAnthropic(base_url=base_url, api_key=key, max_retries=0) as aac:
            count = await aac.messages.count_tokens(model="bedrock-nova", messages=messages)
        assert count.input_tokens > 0, count
    asyncio.run(run())
    try:
        ac.messages.count_tokens(model="smart", messages=messages)
        raise AssertionError("expected a 400")
    except anthropic.BadRequestError as e:
        assert e.body["error"]["type"] == "invalid_request_error", e.body


def main(base_url, key):
    oc = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)
    ac = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)
    for model, provider in MODELS.items():
        openai_checks(oc, model, provider)
        anthropic_checks(ac, model, provider)
        asyncio.run(async_checks(base_url, key, model))
        print(f"{model}: ok")
    # Errors from a provider with its own format reach the client in the client's format.
    try:
        oc.chat.completions.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "x [mock status=429]"}])
        raise AssertionError("expected a 429")
    except openai.RateLimitError as e:
        assert "asked to fail" in e.body["message"], e.body
    try:
        ac.messages.create(model="bedrock-claude", max_tokens=10, messages=[{"role": "user", "content": "x [mock status=400]"}])
        raise AssertionError("expected a 400")
    except anthropic.BadRequestError as e:
        assert e.body["error"]["type"] == "invalid_request_error", e.body
    embedding_checks(base_url, key)
    print("embeddings: ok")
    count_checks(base_url, key)
    print("count_tokens: ok")
    json_mode_checks(base_url, key)
    print("json mode: ok")
    thinking_checks(base_url, key)
    print("thinking on bedrock: ok")
    print("python providers: ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
