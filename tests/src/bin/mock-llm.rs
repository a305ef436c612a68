//! `mock-llm`: a fake LLM provider speaking OpenAI's wire format, for tests, the quick
//! start and benchmarks. See `--help` for how to make it slow or make it fail.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tollgate_tests::mock::{self, Directives};

const AFTER_HELP: &str = "\
ENDPOINTS
  POST /v1/chat/completions                     OpenAI chat completions (JSON, or SSE with \"stream\": true;
                                                a final usage chunk when stream_options.include_usage is set)
  POST /openai/deployments/{d}/chat/completions Azure OpenAI (api-key header, api-version query required)
  POST /v1/responses, /openai/v1/responses      OpenAI / Azure Responses API (JSON or typed SSE events;
                                                stored per key unless store: false, previous_response_id)
  GET  /v1/responses/{id}, DELETE, .../input_items, POST .../cancel, POST /v1/responses/input_tokens
  GET  /v1/responses upgraded to a WebSocket     the Responses WebSocket mode: response.create frames in,
                                                the stream's events out, one text frame each
  POST /v1/messages                             Anthropic Messages (x-api-key, anthropic-version;
                                                extended thinking with signed thinking blocks)
  POST /v1beta/models/{m}:generateContent       Gemini API (x-goog-api-key or ?key=);
       /v1beta/models/{m}:streamGenerateContent  with ?alt=sse for server-sent events
  POST /v1/projects/{p}/locations/{r}/publishers/google/models/{m}:generateContent (and stream)
  POST /v1/projects/{p}/locations/{r}/publishers/anthropic/models/{m}:rawPredict (and streamRawPredict)
                                                Vertex AI, with a bearer token from POST /token
  POST /token                                   OAuth JWT-bearer grant for --google-service-account
  POST /model/{id}/converse, /converse-stream   Bedrock (SigV4 with --aws-key, or a bearer API key);
                                                streams as AWS event-stream frames
  POST /v1/embeddings, /openai/deployments/{d}/embeddings   OpenAI / Azure embeddings (float or base64)
  POST /v1beta/models/{m}:batchEmbedContents, :countTokens  Gemini API embeddings and token counts
  POST .../publishers/google/models/{m}:predict, :countTokens  Vertex AI embeddings and token counts
  POST .../publishers/anthropic/models/count-tokens:rawPredict Claude token counts on Vertex AI
  POST /v1/messages/count_tokens                Anthropic token counts
  POST /model/{id}/invoke                       Bedrock InvokeModel for Titan and Cohere embedding models
  POST /model/{id}/count-tokens                 Bedrock CountTokens (input.converse)
  Embeddings: a text has the same vector in every format, so tests can compare across providers.
  Tool calls: offered tools are called (the first, with arguments from its schema) until the
  conversation holds a tool result, which the answer then quotes.
  GET  /v1/models                               the --model list
  GET  /mock/requests, DELETE /mock/requests    requests received (for tests), and clearing them
  PUT  /mock/faults                             faults for matching requests (see FAULTS AT RUN TIME)

PER-REQUEST BEHAVIOUR
  Set with x-mock-<name> request headers, or with a tag anywhere in a message's text, which
  passes through a gateway untouched:  [mock latency_ms=200 status=503 retry_after=2]

  latency_ms=N      wait N ms before answering
  status=N          answer with HTTP status N and an OpenAI error body
  retry_after=S     with status: send retry-after: S
  chunks=N          the answer has N content pieces (N stream chunks)
  chunk_delay_ms=N  wait N ms between stream chunks
  fail=reset        close the connection without answering
  fail=cut          send half of the body, then break the connection
  fail=stall        streams: send half of the events, then nothing, with the connection open
  first_token_ms=N  streams: wait N ms after the response headers before the first event
  refuse=context_window | content_policy
                    refuse as the provider refuses a too-long or disallowed request (OpenAI;
                    context_window also for Anthropic)
  exhausted_for=S   answer, with OpenAI rate-limit headers saying no requests are left for S s
  omit_usage=1      answer without usage (no usage member or chunk), as some servers do
  pad_bytes=N       OpenAI answers not streamed: N more bytes of content

  Anthropic's web_search tool: the answer makes as many searches as its max_uses (3 when it
  sets none) and reports them in usage.server_tool_use.web_search_requests.

FAULTS AT RUN TIME
  PUT /mock/faults with a JSON array of rules; each applies the directives above to the
  requests that match its optional \"model\" (the requested model) and \"key\" (the API key
  presented), for \"times\" requests (default: all). The first matching rule wins; an empty
  array clears them.
    [{\"model\": \"gpt-4o\", \"status\": 503, \"times\": 3}, {\"key\": \"sk-a\", \"status\": 401}]

EXAMPLE
  curl localhost:9000/v1/chat/completions -H 'authorization: Bearer sk-mock' \\
    -d '{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi [mock latency_ms=100]\"}]}'";

#[derive(Parser, Debug)]
#[command(name = "mock-llm", version, about = "A fake LLM provider for tests and benchmarks", after_help = AFTER_HELP)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Accepted API key (repeatable). Without any, every non-empty key is accepted.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Model listed by GET /v1/models (repeatable).
    #[arg(long = "model", default_values_t = ["gpt-4o".to_string(), "gpt-4o-mini".to_string()])]
    models: Vec<String>,
    /// Default latency before answering, in ms.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Default number of content pieces per answer.
    #[arg(long)]
    chunks: Option<usize>,
    /// Default delay between stream chunks, in ms.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// AWS access key accepted by the Bedrock endpoints, as ID:SECRET (repeatable).
    #[arg(long = "aws-key")]
    aws_keys: Vec<String>,
    /// Service-account key file whose JWT assertions POST /token accepts.
    #[arg(long)]
    google_service_account: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "mock-llm listening");
    let google_account = match &args.google_service_account {
        Some(path) => Some(mock::GoogleAccount::from_key_file(
            &std::fs::read_to_string(path)?,
        )?),
        None => None,
    };
    let config = mock::Config {
        aws_keys: args
            .aws_keys
            .iter()
            .filter_map(|k| k.split_once(':'))
            .map(|(id, secret)| (id.to_string(), secret.to_string()))
            .collect(),
        google_account,
        api_keys: args.api_keys,
        models: args.models,
        defaults: Directives {
            latency: Duration::from_millis(args.latency_ms),
            chunks: args.chunks,
            chunk_delay: Duration::from_millis(args.chunk_delay_ms),
            ..Directives::default()
        },
    };
    tokio::select! {
        () = mock::serve(config, listener) => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    Ok(())
}
