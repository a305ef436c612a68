#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn the_table_reads_and_covers_every_priced_provider_type() {
    assert!(table_size() > 80);
    assert!(!as_of().is_empty());
    for (kind, model) in [
        ("openai", "gpt-4o-mini"),
        ("azure-openai", "gpt-4.1"),
        ("anthropic", "claude-sonnet-4-5"),
        ("gemini", "gemini-2.5-flash"),
        ("vertex-ai", "gemini-2.5-pro"),
        ("vertex-ai", "claude-haiku-4-5@20251001"),
        ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        ("bedrock", "amazon.nova-lite-v1:0"),
        ("bedrock", "amazon.titan-embed-text-v2:0"),
        ("gemini", "models/gemini-2.5-flash"),
        ("gemini", "gemini-1.5-pro-002"),
        ("gemini", "gemini-3.1-pro"),
        ("anthropic", "claude-opus-4-8"),
        ("anthropic", "claude-3-5-sonnet-20241022"),
        ("anthropic", "claude-3-5-sonnet-latest"),
    ] {
        assert!(builtin(kind, model).is_some(), "{kind} {model}");
    }
    assert_eq!(builtin("openai-compatible", "gpt-4o"), None);
}

#[test]
fn names_are_exact_or_a_snapshot_of_one_never_a_prefix() {
    let p = |m| builtin("openai", m).map(|p| (p.base.input, p.base.output));
    assert_eq!(p("gpt-4o-mini-2024-07-18"), Some((0.15, 0.6)));
    assert_eq!(p("gpt-4o-2024-08-06"), Some((2.5, 10.0)));
    // A snapshot priced on its own keeps its own price.
    assert_eq!(p("gpt-4o-2024-05-13"), Some((5.0, 15.0)));
    // A longer name is another model: its own entry, or no price at all.
    assert_eq!(p("o1-pro"), Some((150.0, 600.0)));
    assert_eq!(p("o1"), Some((15.0, 60.0)));
    assert_eq!(p("gpt-5.5-2026-04-23"), Some((5.0, 30.0)));
    assert_eq!(p("gpt-5"), Some((1.25, 10.0)), "not gpt-5.5's price");
    for unknown in [
        "o1-preview-x",
        "gpt-4o-audio",
        "gpt-4o-mini-tts",
        "ft:gpt-4o-mini-2024-07-18:acme::abc123",
        "gpt-4",
        "gpt-4o-20240806x",
        "my-deployment",
    ] {
        assert_eq!(p(unknown), None, "{unknown}");
    }
    assert_eq!(
        names("us.anthropic.claude-3-5-sonnet-20241022-v2:0"),
        vec![
            "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
            "anthropic.claude-3-5-sonnet-20241022-v2:0",
            "anthropic.claude-3-5-sonnet-20241022-v2",
            "anthropic.claude-3-5-sonnet-20241022",
            "anthropic.claude-3-5-sonnet",
        ]
    );
    assert_eq!(names("gpt-4o"), vec!["gpt-4o"]);
}

#[test]
fn cache_writes_and_long_context_are_billed_at_their_rates() {
    let sonnet = builtin("anthropic", "claude-sonnet-4-5").unwrap();
    // 1,000 fresh, 400 cache reads, 600 cache writes in; 100 out.
    let short = Tokens {
        input: 2_000,
        cached: 400,
        cache_write: 600,
        output: 100,
        web_searches: 0,
    };
    assert_eq!(
        sonnet.cost_nano(short),
        1_000 * 3_000 + 400 * 300 + 600 * 3_750 + 100 * 15_000
    );
    // Past 200K input tokens the whole request is at the long-context rates.
    let long = Tokens {
        input: 200_001,
        output: 10,
        ..Tokens::default()
    };
    assert_eq!(sonnet.cost_nano(long), 200_001 * 6_000 + 10 * 22_500);
    // The worst case takes every input token at the dearer write rate.
    assert_eq!(
        sonnet.worst_case_nano(1_000, 10),
        1_000 * 3_750 + 10 * 15_000
    );
    assert_eq!(
        sonnet.worst_case_nano(300_000, 10),
        300_000 * 7_500 + 10 * 22_500
    );
}

#[test]
fn counts_saturate_instead_of_wrapping() {
    let p = builtin("openai", "gpt-4o").unwrap();
    assert_eq!(p.worst_case_nano(u64::MAX, u64::MAX), u64::MAX);
    let t = Tokens {
        input: u64::MAX,
        cached: u64::MAX,
        cache_write: u64::MAX,
        output: u64::MAX,
        web_searches: u64::MAX,
    };
    assert_eq!(p.cost_nano(t), u64::MAX);
}

#[test]
fn overrides_set_prices_and_map_deployments() {
    let o = [Override {
        model: "gpt-4o".into(),
        input: Some(1.0),
        ..Default::default()
    }];
    let p = lookup("openai", &o, "gpt-4o").unwrap();
    assert_eq!(
        (p.base.input, p.base.output, p.base.cached),
        (1.0, 10.0, Some(1.25))
    );
    let local = [Override {
        model: "llama".into(),
        input: Some(0.5),
        output: Some(0.5),
        ..Default::default()
    }];
    assert!(lookup("openai-compatible", &local, "llama").is_some());
    assert!(lookup("openai-compatible", &local, "other").is_none());
    // Half a price is no price: the output would be free.
    let half = [Override {
        model: "llama".into(),
        input: Some(0.5),
        ..Default::default()
    }];
    assert!(lookup("openai-compatible", &half, "llama").is_none());
    // An Azure deployment priced as the model it serves.
    let azure = [Override {
        model: "prod-chat".into(),
        price_as: Some("gpt-4.1-mini".into()),
        ..Default::default()
    }];
    assert_eq!(
        lookup("azure-openai", &azure, "prod-chat"),
        builtin("azure-openai", "gpt-4.1-mini")
    );
    assert!(lookup("azure-openai", &[], "prod-chat").is_none());
}

#[test]
fn web_searches_are_billed_per_search() {
    let p = builtin("anthropic", "claude-sonnet-4-5").unwrap();
    let t = Tokens {
        input: 10,
        output: 10,
        web_searches: 3,
        ..Tokens::default()
    };
    // 10 in at 3 USD, 10 out at 15 USD per million, and 3 searches at 0.01 USD.
    assert_eq!(p.cost_nano(t), 10 * 3_000 + 10 * 15_000 + 3 * 10_000_000);
    assert_eq!(p.search_fees_nano(3), 30_000_000);
    assert_eq!(builtin("openai", "gpt-4o").unwrap().search_fees_nano(3), 0);
}
