//! Classifying a provider's answer: rate-limit headers and refusals.

use super::*;

#[test]
fn rate_limit_headers_set_a_key_aside() {
    let headers = |pairs: &[(&'static str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    };
    let ok = StatusCode::OK;
    assert_eq!(exhausted_for(ok, &headers(&[])), None);
    assert_eq!(
        exhausted_for(ok, &headers(&[("x-ratelimit-remaining-requests", "3")])),
        None
    );
    assert_eq!(
        exhausted_for(
            ok,
            &headers(&[
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "6m0s")
            ])
        ),
        Some(Duration::from_secs(360))
    );
    assert_eq!(
        exhausted_for(
            ok,
            &headers(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "2h")
            ])
        ),
        Some(Duration::from_secs(3600)),
        "capped"
    );
    let soon = now_unix() + 100;
    let date = {
        // Seconds since the epoch back to a date, by search: the parser is the thing
        // under test, so the expected text is built independently.
        let days = soon.div_euclid(86_400);
        let secs = soon.rem_euclid(86_400);
        let (mut y, mut d) = (1970i64, days);
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        while d >= if leap(y) { 366 } else { 365 } {
            d -= if leap(y) { 366 } else { 365 };
            y += 1;
        }
        let months = [
            31,
            if leap(y) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        let mut m = 0;
        while d >= months[m] {
            d -= months[m];
            m += 1;
        }
        format!(
            "{y:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            m + 1,
            d + 1,
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        )
    };
    let wait = exhausted_for(
        ok,
        &headers(&[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", &date),
        ]),
    )
    .unwrap();
    assert!((99..=100).contains(&wait.as_secs()), "{wait:?} from {date}");
    let limited = StatusCode::TOO_MANY_REQUESTS;
    assert_eq!(exhausted_for(limited, &headers(&[])), None);
    assert_eq!(
        exhausted_for(limited, &headers(&[("retry-after", "7")])),
        Some(Duration::from_secs(7))
    );
}

#[test]
fn refusals_are_classed_by_the_providers_words() {
    for (body, class) in [
        (
            &br#"{"error":{"code":"context_length_exceeded","message":"This model's maximum context length is 128000 tokens."}}"#[..],
            Some(Failure::ContextWindow),
        ),
        (
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
            Some(Failure::ContextWindow),
        ),
        (
            br#"{"message":"Input is too long for requested model."}"#,
            Some(Failure::ContextWindow),
        ),
        (
            br#"{"error":{"code":"content_filter","message":"The response was filtered"}}"#,
            Some(Failure::ContentPolicy),
        ),
        (
            br#"{"error":{"code":null,"message":"Invalid value for 'temperature'"}}"#,
            None,
        ),
    ] {
        assert_eq!(refusal_class(body), class, "{}", String::from_utf8_lossy(body));
    }
}
