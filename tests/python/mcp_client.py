"""Drives the gateway's /mcp endpoint with the official `mcp` SDK client and prints what it
saw as one JSON object, for the end-to-end tests to check.

Scenarios:
  tour    list tools, call each tool named by --call (NAME=JSON arguments), list and read
          resources, list prompts, complete the arguments of each `completable-prompt`,
          get --prompt, ping, set the log level, subscribe to
          and unsubscribe from a demo:// resource, make each --progress-call with a
          progress callback, and end the session (DELETE).

The client answers servers' sampling requests itself, with the text SAMPLED.
  switch  list tools at --url, then wait for a line on stdin (the test stops the first
          dataplane meanwhile), then call --call tools and list tools at --second-url,
          within the same session.
"""

import argparse
import asyncio
import json
import sys
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CreateMessageResult,
    PromptReference,
    ResourceTemplateReference,
    TextContent,
)

SAMPLED = "sampled by the test client"


async def sample(context: Any, params: Any) -> CreateMessageResult:
    """Answers a server's sampling request (relayed by the gateway) without any model."""
    return CreateMessageResult(
        role="assistant", content=TextContent(type="text", text=SAMPLED), model="test-model"
    )


def parse_calls(items: list[str]) -> list[tuple[str, dict[str, Any]]]:
    calls = []
    for item in items:
        name, _, args = item.partition("=")
        calls.append((name, json.loads(args) if args else {}))
    return calls


async def call(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    try:
        r = await client.call_tool(name, arguments)
        text = " ".join(c.text for c in r.content if getattr(c, "type", "") == "text")
        return {"name": name, "ok": not r.is_error, "text": text}
    except MCPError as e:
        return {"name": name, "error": {"code": e.code, "message": e.error.message}}


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["tour", "switch"])
    p.add_argument("--url", required=True)
    p.add_argument("--second-url")
    p.add_argument("--key", required=True)
    p.add_argument("--call", action="append", default=[])
    p.add_argument(
        "--progress-call",
        action="append",
        default=[],
        help="NAME=JSON arguments: a tool call whose progress is recorded",
    )
    p.add_argument("--prompt", help="NAME=JSON arguments: a prompt to get")
    args = p.parse_args()

    out: dict[str, Any] = {"requests": []}
    target = {"url": args.url}

    async def on_request(request: httpx2.Request) -> None:
        # Every request goes to the current dataplane; `switch` changes it mid-session.
        current = httpx2.URL(target["url"])
        request.url = request.url.copy_with(host=current.host, port=current.port)
        out["requests"].append(
            {
                "method": request.method,
                "port": current.port,
                "session": request.headers.get("mcp-session-id"),
            }
        )

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {args.key}"})
    http.event_hooks["request"].append(on_request)
    async with http:
        # A tour ends its session (DELETE); `switch` leaves it to outlive the dataplanes.
        transport = streamable_http_client(
            args.url, http_client=http, terminate_on_close=args.scenario == "tour"
        )
        async with Client(transport, mode="auto", sampling_callback=sample) as client:
            out["protocol_version"] = client.protocol_version
            out["server"] = client.server_info.name if client.server_info else None
            tools = await client.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            out["tool_meta"] = tools.meta
            out["tool_descriptions"] = {t.name: t.description for t in tools.tools}
            if args.scenario == "switch":
                print(json.dumps({"ready": True}), flush=True)
                sys.stdin.readline()
                target["url"] = args.second_url
                out["tools_after"] = sorted(t.name for t in (await client.list_tools()).tools)
            out["calls"] = [await call(client, n, a) for n, a in parse_calls(args.call)]
            if args.scenario == "tour":
                resources = await client.list_resources()
                out["resources"] = sorted(str(r.uri) for r in resources.resources)
                if resources.resources:
                    read = await client.read_resource(str(resources.resources[0].uri))
                    out["resource_text"] = [getattr(c, "text", None) for c in read.contents]
                prompts = await client.list_prompts()
                out["prompts"] = sorted(pr.name for pr in prompts.prompts)
                out["completions"] = {}
                for name in out["prompts"]:
                    if name.endswith("__completable-prompt"):
                        # The second argument's values depend on the first (context).
                        done = await client.complete(
                            PromptReference(type="ref/prompt", name=name),
                            {"name": "name", "value": ""},
                            context_arguments={"department": "Sales"},
                        )
                        out["completions"][name] = done.completion.values
                # A resource template's variable is completed by the server that has it.
                templates = await client.list_resource_templates()
                out["templates"] = sorted(t.uri_template for t in templates.resource_templates)
                out["template_completions"] = {}
                for uri in out["templates"]:
                    if uri.startswith("demo://resource/dynamic/text/"):
                        done = await client.complete(
                            ResourceTemplateReference(type="ref/resource", uri=uri),
                            {"name": "resourceId", "value": "7"},
                        )
                        out["template_completions"][uri] = done.completion.values
                if args.prompt:
                    [(name, arguments)] = parse_calls([args.prompt])
                    got = await client.get_prompt(name, arguments)
                    out["prompt_text"] = [getattr(m.content, "text", None) for m in got.messages]
                await client.session.send_ping()
                out["ping"] = True
                await client.set_logging_level("debug")
                out["log_level"] = True
                demo = [str(r.uri) for r in resources.resources if str(r.uri).startswith("demo://")]
                if demo:
                    await client.subscribe_resource(demo[0])
                    await client.unsubscribe_resource(demo[0])
                    out["subscribed"] = demo[0]
                out["progress"] = {}
                out["progress_result"] = {}
                for name, arguments in parse_calls(args.progress_call):
                    seen: list[float] = []

                    async def progress(
                        value: float, total: float | None, message: str | None, seen: list[float] = seen
                    ) -> None:
                        seen.append(value)

                    r = await client.call_tool(name, arguments, progress_callback=progress)
                    out["progress"][name] = seen
                    out["progress_result"][name] = " ".join(
                        c.text for c in r.content if getattr(c, "type", "") == "text"
                    )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
