"""An agent instrumented as OpenTelemetry users instrument one, for the gateway's trace
test: the official `openai` SDK with the official OpenTelemetry OpenAI instrumentation
(`opentelemetry-instrumentation-openai-v2`, GenAI client spans) and the HTTP client's
instrumentation (which sends each request's `traceparent`), and the official `mcp` SDK
over the same HTTP client. Its spans go over OTLP/gRPC to --otlp. Under one root span
(`agent-run`) it makes a chat request that fails over, a streamed one, and an MCP tool
call, then prints what the test needs as one JSON object.
"""

import argparse
import asyncio
import json
import time

import openai
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


async def tool_call(url: str, key: str) -> str:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            r = await client.call_tool("ledger__ledger_read", {"account": "acct-9"})
            return " ".join(c.text for c in r.content if getattr(c, "type", "") == "text")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True)
    p.add_argument("--mcp", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--otlp", required=True, help="host:port of an OTLP/gRPC receiver")
    p.add_argument("--failover-model", required=True)
    p.add_argument("--stream-model", required=True)
    p.add_argument("--prompt", required=True)
    args = p.parse_args()

    provider = TracerProvider(resource=Resource.create({"service.name": "test-agent"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=args.otlp, insecure=True))
    )
    trace.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument()
    HTTPX2ClientInstrumentor().instrument()
    tracer = trace.get_tracer("test-agent")

    client = openai.OpenAI(base_url=args.api, api_key=args.key, max_retries=0)
    out = {}
    with tracer.start_as_current_span("agent-run") as run:
        out["trace_id"] = format(run.get_span_context().trace_id, "032x")
        out["root_span_id"] = format(run.get_span_context().span_id, "016x")
        r = client.chat.completions.create(
            model=args.failover_model,
            messages=[{"role": "user", "content": args.prompt}],
            max_tokens=50,
            temperature=0.25,
        )
        out["failover_response_id"] = r.id
        stream = client.chat.completions.create(
            model=args.stream_model,
            # Five chunks, 150 ms apart: the answer lasts well beyond its first byte.
            messages=[{"role": "user", "content": "[mock chunks=5 chunk_delay_ms=150]"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        out["stream_started_ns"] = time.time_ns()
        chunks = sum(1 for _ in stream)
        out["stream_ended_ns"] = time.time_ns()
        out["stream_chunks"] = chunks
        out["tool_text"] = asyncio.run(tool_call(args.mcp, args.key))
    provider.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
