"""An agent written with the OpenAI Agents SDK, with its default model (its default
settings: reasoning effort and verbosity) and transport (the Responses API over HTTP),
pointed at the gateway: a function tool round trip per turn, a follow-up turn on the
stored conversation (`previous_response_id`), a streamed turn, and a turn that sends its
history itself. Exits non-zero (with the assertion) on any mismatch.

Usage: agents_client.py BASE_URL API_KEY [http|websocket] [stored|sent]

With `websocket`, the SDK's WebSocket transport: `GET /v1/responses` upgraded, a
`response.create` frame per model call. With `sent`, every follow-up turn sends the
conversation so far (`to_input_list()`) instead of `previous_response_id`: for a model
reached by translation (Claude), which stores nothing.
"""

import asyncio
import json
import sys

from agents import (
    Agent,
    Runner,
    function_tool,
    set_default_openai_client,
    set_default_openai_responses_transport,
    set_tracing_disabled,
)
from agents.models.default_models import get_default_model
from openai import AsyncOpenAI

CALLS = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CALLS.append(city)
    return f"sunny in {city}"


async def follow_up(agent, previous, words, conversation, streamed=False):
    """A follow-up turn on `previous`: by its id, or with the conversation sent."""
    if conversation == "stored":
        args = (agent, words)
        kwargs = {"previous_response_id": previous.last_response_id}
    else:
        args = (agent, previous.to_input_list() + [{"role": "user", "content": words}])
        kwargs = {}
    if not streamed:
        return await Runner.run(*args, **kwargs)
    run = Runner.run_streamed(*args, **kwargs)
    kinds = set()
    async for event in run.stream_events():
        kinds.add(event.type)
    assert "raw_response_event" in kinds, kinds
    return run


async def main(base_url, key, transport="http", conversation="stored"):
    set_tracing_disabled(True)
    set_default_openai_responses_transport(transport)
    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)
    set_default_openai_client(client, use_for_tracing=False)
    agent = Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather])

    first = await Runner.run(agent, "What is the weather in Paris?")
    assert CALLS == ["Paris"], CALLS
    assert first.final_output == "Mock reply to: tool result: sunny in Paris", first.final_output
    assert first.last_response_id.startswith("resp_"), first.last_response_id

    second = await follow_up(agent, first, "And tomorrow?", conversation)
    assert CALLS == ["Paris", "Paris"], CALLS
    assert second.final_output == "Mock reply to: tool result: sunny in Paris"

    streamed = await follow_up(agent, second, "And in Lyon?", conversation, streamed=True)
    assert streamed.final_output == "Mock reply to: tool result: sunny in Paris"

    history = second.to_input_list() + [{"role": "user", "content": "Thanks!"}]
    third = await Runner.run(agent, history)
    assert len(CALLS) == 4, CALLS
    assert third.final_output == "Mock reply to: tool result: sunny in Paris"

    print(json.dumps({"model": get_default_model(), "tool_calls": len(CALLS), "transport": transport}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
