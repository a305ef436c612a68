"""Drives the Responses API with the official OpenAI Python SDK: `responses.create`,
`responses.stream`, a function-tool round trip through `previous_response_id`,
`responses.retrieve`, `input_items.list`, `input_tokens.count`, `cancel`, `delete`, and
the errors for an unknown previous response. Exits non-zero (with the assertion) on any
mismatch; prints one JSON line with the ids it made.

Usage: responses_client.py BASE_URL API_KEY MODEL [full|turns]

`turns` drives only the turns (create, stream, the tool round trip); `full` (the
default) also the stored-response endpoints and `input_tokens.count`.
"""

import json
import sys

import openai
from openai import OpenAI

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def main(base_url, key, model, mode="full"):
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0)

    first = client.responses.create(
        model=model,
        input="hello responses",
        instructions="be brief",
        metadata={"run": "e2e"},
        max_output_tokens=64,
        reasoning={"effort": "low"},
    )
    assert first.object == "response", first
    assert first.status == "completed", first.status
    assert first.output_text == "Mock reply to: hello responses", first.output_text
    assert first.metadata == {"run": "e2e"}, first.metadata
    assert first.usage.input_tokens > 0
    assert first.usage.output_tokens_details.reasoning_tokens > 0, first.usage
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens

    # A stream: every typed event in order, numbered, ending in the whole response.
    kinds, deltas, numbers, created = [], [], [], None
    with client.responses.stream(model=model, input="stream this [mock chunks=6]") as stream:
        for event in stream:
            kinds.append(event.type)
            numbers.append(event.sequence_number)
            if event.type == "response.created":
                created = event.response.id
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert kinds[0] == "response.created", kinds
    assert kinds[1] == "response.in_progress", kinds
    for kind in [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]:
        assert kind in kinds, (kind, kinds)
    assert kinds[-1] == "response.completed", kinds
    assert numbers == list(range(len(numbers))), numbers
    assert len(deltas) == 6, deltas
    assert "".join(deltas) == final.output_text, (deltas, final.output_text)
    assert final.usage.output_tokens > 0
    assert created == final.id, (created, final.id)

    # A tool round trip: the call, then its output on the stored conversation.
    asked = client.responses.create(model=model, input="weather in Paris?", tools=[WEATHER])
    calls = [o for o in asked.output if o.type == "function_call"]
    assert len(calls) == 1, asked.output
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}, calls[0].arguments
    answered = client.responses.create(
        model=model,
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert answered.output_text == "Mock reply to: tool result: sunny", answered.output_text
    assert answered.previous_response_id == asked.id
    assert answered.usage.input_tokens_details.cached_tokens > 0, answered.usage

    # The tool call streamed: its arguments in deltas.
    args = []
    with client.responses.stream(model=model, input="weather again?", tools=[WEATHER]) as stream:
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                args.append(event.delta)
        streamed_call = stream.get_final_response()
    assert json.loads("".join(args)) == {"city": "Paris"}, args
    assert streamed_call.output[0].type == "function_call"
    ids = {"first": first.id, "asked": asked.id, "answered": answered.id, "usage": {
        "input": answered.usage.input_tokens,
        "cached": answered.usage.input_tokens_details.cached_tokens,
        "output": first.usage.output_tokens,
        "reasoning": first.usage.output_tokens_details.reasoning_tokens,
    }}
    if mode == "turns":
        print(json.dumps(ids))
        return

    got = client.responses.retrieve(asked.id)
    assert got.id == asked.id and got.output[0].type == "function_call", got
    items = client.responses.input_items.list(answered.id)
    assert [i.type for i in items.data] == ["function_call_output"], items
    counted = client.responses.input_tokens.count(model=model, input="count these four words")
    assert counted.input_tokens > 0, counted

    try:
        client.responses.create(model=model, previous_response_id="resp_unknown", input="x")
        raise AssertionError("an unknown previous response was accepted")
    except openai.BadRequestError as e:
        assert e.body["code"] == "previous_response_not_found", e.body
    try:
        client.responses.cancel(first.id)
        raise AssertionError("a foreground response was cancelled")
    except openai.BadRequestError:
        pass

    deleted = client.responses.delete(first.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    try:
        client.responses.retrieve(first.id)
        raise AssertionError("a deleted response was found")
    except openai.NotFoundError:
        pass

    print(json.dumps(ids))


if __name__ == "__main__":
    main(*sys.argv[1:5])
