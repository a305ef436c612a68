"""Drives a provider that hangs with the official OpenAI Python SDK:

- model "hung": the first target accepts the request and never answers; the route's
  attempt deadline (800 ms) moves the request to its fallback, JSON and streamed, long
  before the request's own timeout (20 s here, 300 s by default);
- model "silent": the stream goes quiet half way; the route's idle timeout (500 ms)
  continues it on the next target, and the SDK sees one whole stream;
- model "silent-ends": the same with no continuation: the stream ends with an error
  event the SDK raises, within the idle timeout.

Exits non-zero (with the assertion) on any mismatch.

Usage: deadlines_client.py BASE_URL API_KEY
"""

import sys
import time

import openai
from openai import OpenAI

# Well under the request timeout, with room for a loaded CI machine.
WITHIN = 5.0
EXPECTED = "Mock reply to: keep going" + " more" * 5


def main(base_url, key):
    # The SDK's own timeout is far longer than the gateway's deadlines: it must not be
    # what ends a request here.
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60.0)
    messages = [{"role": "user", "content": "are you there"}]

    t = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="hung", messages=messages)
    took = time.monotonic() - t
    completion = raw.parse()
    assert raw.headers["x-tollgate-model"] == "m-rescue", raw.headers
    assert raw.headers["x-tollgate-attempts"] == "2", raw.headers
    assert completion.choices[0].message.content == "Mock reply to: are you there"
    assert 0.8 <= took < WITHIN, took

    t = time.monotonic()
    stream = client.chat.completions.create(model="hung", messages=messages, stream=True)
    content = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    took = time.monotonic() - t
    assert content == "Mock reply to: are you there", repr(content)
    assert 0.8 <= took < WITHIN, took

    words = [{"role": "user", "content": "keep going"}]
    t = time.monotonic()
    stream = client.chat.completions.create(model="silent", messages=words, stream=True)
    chunks = list(stream)
    took = time.monotonic() - t
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == EXPECTED, repr(content)
    assert len({c.id for c in chunks}) == 1
    assert 0.5 <= took < WITHIN, took

    t = time.monotonic()
    received = []
    try:
        for c in client.chat.completions.create(model="silent-ends", messages=words, stream=True):
            received.extend(x.delta.content or "" for x in c.choices)
        raise AssertionError("a silent stream ended as if whole: " + repr("".join(received)))
    except openai.APIError as e:
        took = time.monotonic() - t
        assert "sent nothing" in str(e) or "stream" in str(e).lower(), e
    assert "".join(received) and EXPECTED.startswith("".join(received)), received
    assert 0.5 <= took < WITHIN, took

    print("deadlines ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
