"""Drives the Responses API with the official OpenAI Python SDK: `responses.create`,
`responses.stream`, a function-tool round trip through `previous_response_id`,
`responses.retrieve`, `input_items.list`, `input_tokens.count`, `cancel`, `delete`, and
the errors for an unknown previous response. Exits non-zero (with the assertion) on any
mismatch; prints one JSON line with the ids it made.

Usage: responses_client.py BASE_URL API_KEY MODEL [full|turns|translated]

`turns` drives only the turns (create, stream, the tool round trip); `full` (the
default) also the stored-response endpoints and `input_tokens.count`. `translated` is for
a model the gateway reaches by translation (Claude): reasoning with its summary, the tool
round trip with the whole conversation sent back (reasoning items included), and the
clear errors for what such a target cannot do (`previous_response_id`, `store`,
`responses.retrieve`).
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


def stream_kinds(stream, created=None):
    """The stream's events: kinds, text deltas, argument deltas (the sequence numbers
    checked); the id `response.created` gave is appended to `created`."""
    kinds, deltas, args, numbers = [], [], [], []
    for event in stream:
        kinds.append(event.type)
        numbers.append(event.sequence_number)
        if event.type == "response.created" and created is not None:
            created.append(event.response.id)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.function_call_arguments.delta":
            args.append(event.delta)
    assert numbers == list(range(len(numbers))), numbers
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    return kinds, deltas, args


def streamed_text(client, model):
    """A streamed text answer: its typed events in order and numbered, six text deltas
    that make the final response's text, which `response.created` named."""
    created = []
    with client.responses.stream(model=model, input="stream this [mock chunks=6]") as stream:
        kinds, deltas, _ = stream_kinds(stream, created)
        final = stream.get_final_response()
    for kind in [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]:
        assert kind in kinds, (kind, kinds)
    assert kinds[-1] == "response.completed", kinds
    assert len(deltas) == 6, deltas
    assert "".join(deltas) == final.output_text, (deltas, final.output_text)
    assert final.usage.output_tokens > 0, final.usage
    assert created == [final.id], (created, final.id)
    return final


def translated(client, model):
    reasoning = {"effort": "low", "summary": "auto"}
    first = client.responses.create(
        model=model,
        input="hello responses",
        instructions="be brief",
        max_output_tokens=4096,
        reasoning=reasoning,
        metadata={"run": "e2e"},
    )
    assert first.status == "completed", first
    assert first.output_text == "Mock reply to: hello responses", first.output_text
    assert [o.type for o in first.output] == ["reasoning", "message"], first.output
    assert first.output[0].summary[0].text == "Mock thinking about: hello responses", first.output
    assert first.output[0].encrypted_content, first.output[0]
    assert first.instructions == "be brief" and first.metadata == {"run": "e2e"}, first
    assert first.store is False, first.store
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0, first.usage
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens

    streamed_text(client, model)

    # The tool round trip with the whole conversation: the items of the first answer
    # (Claude's signed thinking among them) go back with the call's output.
    question = [{"role": "user", "content": "weather in Paris?"}]
    with client.responses.stream(
        model=model, input=question, tools=[WEATHER], reasoning=reasoning, max_output_tokens=4096
    ) as stream:
        kinds, _, args = stream_kinds(stream)
        asked = stream.get_final_response()
    assert "response.reasoning_summary_text.delta" in kinds, kinds
    assert json.loads("".join(args)) == {"city": "Paris"}, args
    assert [o.type for o in asked.output] == ["reasoning", "function_call"], asked.output
    call = asked.output[1]
    history = question + [o.model_dump(exclude_none=True) for o in asked.output]
    answered = client.responses.create(
        model=model,
        input=history + [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
        reasoning=reasoning,
        max_output_tokens=4096,
    )
    assert answered.output_text == "Mock reply to: tool result: sunny", answered.output_text

    # What a target that stores nothing cannot do: said, never answered without history.
    for extra in [{"previous_response_id": asked.id}, {"store": True}]:
        try:
            client.responses.create(model=model, input="and then?", **extra)
            raise AssertionError(f"{extra} was accepted")
        except openai.BadRequestError as e:
            assert "send the whole conversation as input" in e.body["message"], e.body
            assert e.body["param"] is None or e.body["param"] in extra, e.body
    try:
        client.responses.retrieve(asked.id)
        raise AssertionError("a translated response was found")
    except openai.NotFoundError as e:
        assert "not stored" in e.body["message"], e.body
    try:
        client.responses.create(model=model, input="search", tools=[{"type": "web_search"}])
        raise AssertionError("a hosted tool was accepted")
    except openai.BadRequestError as e:
        assert "tools[0].type" in e.body["message"], e.body
    print(json.dumps({"first": first.id, "asked": asked.id, "answered": answered.id}))


def main(base_url, key, model, mode="full"):
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0)
    if mode == "translated":
        translated(client, model)
        return

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
    final = streamed_text(client, model)

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
