"""An MCP server written with the official `mcp` SDK, served over Streamable HTTP, for the
gateway's end-to-end tests. Every tool call it receives is appended to --log as one JSON
line, so a test can show that a refused call never reached it.

Auth (optional): --bearer TOKEN requires `Authorization: Bearer TOKEN`; --oauth serves an
OAuth 2 token endpoint at /oauth/token (client credentials, client `tollgate`, secret
`oauth-s3cret`, HTTP Basic) and accepts only the tokens it issued and has not revoked
(POST /oauth/revoke revokes them all).
"""

import argparse
import asyncio
import base64
import json
import secrets
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse

OAUTH_CLIENT = ("tollgate", "oauth-s3cret")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--name", default="ledger")
    p.add_argument("--bearer")
    p.add_argument("--oauth", action="store_true")
    args = p.parse_args()

    def record(kind: str, **fields) -> None:
        with open(args.log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, **fields}) + "\n")

    server = MCPServer(args.name, instructions="Test ledger server.")

    @server.tool(description="Reads an account's balance. Returns the balance in cents.")
    def ledger_read(account: str, ctx: Context) -> str:
        headers = getattr(ctx.request_context.request, "headers", None) or {}
        record(
            "call",
            tool="ledger_read",
            arguments={"account": account},
            traceparent=headers.get("traceparent"),
        )
        return f"{account}: 1200"

    @server.tool(description="Deletes an account.")
    def ledger_delete(account: str) -> str:
        record("call", tool="ledger_delete", arguments={"account": account})
        return f"{account} deleted"

    @server.tool(description="Sends an email.")
    def send_email(to: str, body: str) -> str:
        record("call", tool="send_email", arguments={"to": to})
        return "sent"

    @server.tool(description="Counts to n slowly, reporting progress at each step.")
    async def slow_count(n: int, ctx: Context, stall_after: int = 0) -> str:
        record("call", tool="slow_count", arguments={"n": n})
        try:
            for i in range(1, n + 1):
                await asyncio.sleep(0.05)
                await ctx.report_progress(i, n, f"step {i}")
                if i == stall_after:
                    # Silent for longer than any test waits.
                    await asyncio.sleep(120)
        except asyncio.CancelledError:
            record("cancelled", tool="slow_count")
            raise
        return f"counted to {n}"

    @server.tool(description="Fails on purpose.")
    def broken() -> str:
        record("call", tool="broken", arguments={})
        raise ValueError("broken on purpose")

    @server.resource("ledger://accounts", description="Every account.")
    def accounts() -> str:
        return "acme,globex"

    @server.prompt(description="Asks for a summary of an account.")
    def summarize(account: str) -> str:
        return f"Summarize the ledger of {account}."

    issued: set[str] = set()

    @server.custom_route("/oauth/token", methods=["POST"])
    async def token(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        form = await request.form()
        ok = False
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            ok = (user, password) == OAUTH_CLIENT
        if not ok or form.get("grant_type") != "client_credentials":
            record("token", granted=False)
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        t = secrets.token_urlsafe(16)
        issued.add(t)
        record("token", granted=True, scope=form.get("scope", ""))
        return JSONResponse({"access_token": t, "token_type": "Bearer", "expires_in": 3600})

    @server.custom_route("/oauth/revoke", methods=["POST"])
    async def revoke(request: Request) -> JSONResponse:
        # Every token issued so far stops working, as when an authorization server
        # revokes them before they expire.
        issued.clear()
        record("revoked")
        return JSONResponse({})

    app = server.streamable_http_app(host="127.0.0.1")

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/mcp"):
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            got = headers.get("authorization", "")
            allowed = True
            if args.bearer is not None:
                allowed = got == f"Bearer {args.bearer}"
            if args.oauth:
                allowed = got.startswith("Bearer ") and got[7:] in issued
            if not allowed:
                record("unauthorized", method=scope["method"])
                response = JSONResponse({"error": "unauthorized"}, status_code=401)
                await response(scope, receive, send)
                return
        await app(scope, receive, send)

    print(f"mcp test server {args.name} on {args.port}", file=sys.stderr, flush=True)
    uvicorn.run(guarded, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
