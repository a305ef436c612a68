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
  GET  /v1/models                               the --model list
  GET  /mock/requests, DELETE /mock/requests    requests received (for tests), and clearing them

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
    let config = mock::Config {
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
