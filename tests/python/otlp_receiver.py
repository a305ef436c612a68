"""An OTLP receiver for the gateway's end-to-end tests, built on the official
OpenTelemetry protobuf definitions (`opentelemetry-proto`): the collector's gRPC
services (TraceService, LogsService) and OTLP/HTTP with protobuf bodies (`/v1/traces`,
`/v1/logs`). Every export it receives is appended to --out as one JSON line
(`{"signal", "protocol", "headers", "request"}`, the request as protobuf's JSON mapping,
the headers those of its request or call metadata whose names begin with `x-`), so a test
can read every span and log record a run produced, and what the exporter sent with it.
"""

import argparse
import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    def keep(signal: str, protocol: str, headers, request) -> None:
        headers = {k.lower(): v for k, v in headers if k.lower().startswith("x-")}
        line = json.dumps(
            {
                "signal": signal,
                "protocol": protocol,
                "headers": headers,
                "request": MessageToDict(request),
            }
        )
        with LOCK, open(args.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            keep("traces", "grpc", context.invocation_metadata(), request)
            return trace_service_pb2.ExportTraceServiceResponse()

    class Logs(logs_service_pb2_grpc.LogsServiceServicer):
        def Export(self, request, context):
            keep("logs", "grpc", context.invocation_metadata(), request)
            return logs_service_pb2.ExportLogsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    server.add_insecure_port(f"127.0.0.1:{args.grpc_port}")
    server.start()

    kinds = {
        "/v1/traces": (
            "traces",
            trace_service_pb2.ExportTraceServiceRequest,
            trace_service_pb2.ExportTraceServiceResponse,
        ),
        "/v1/logs": (
            "logs",
            logs_service_pb2.ExportLogsServiceRequest,
            logs_service_pb2.ExportLogsServiceResponse,
        ),
    }

    class Http(BaseHTTPRequestHandler):
        def do_POST(self):
            kind = kinds.get(self.path)
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if kind is None or self.headers.get("content-type") != "application/x-protobuf":
                self.send_response(404 if kind is None else 415)
                self.end_headers()
                return
            signal, request, response = kind
            keep(signal, "http/protobuf", self.headers.items(), request.FromString(body))
            out = response().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *_):
            pass

    ThreadingHTTPServer(("127.0.0.1", args.http_port), Http).serve_forever()


if __name__ == "__main__":
    main()
