//! Property tests over request decoding and validation: arbitrary bytes, JSON
//! and Unicode never panic and never produce a 5xx.

use super::support::*;
use proptest::prelude::*;
use support_chat::http::parse_body;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        "[0-9a-f-]{36}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::hash_map(
                prop_oneof![
                    Just("message".to_owned()),
                    Just("sessionId".to_owned()),
                    ".{0,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_refused_or_accepted_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = parse_body(&bytes) {
            prop_assert!((400..500).contains(&e.status()), "{e:?}");
        }
    }

    #[test]
    fn arbitrary_json_gets_a_4xx_or_a_valid_request(v in json_value()) {
        match parse_body(v.to_string().as_bytes()) {
            Ok((m, _)) => {
                let n = m.as_str().chars().count();
                prop_assert!((1..=2000).contains(&n));
                prop_assert!(!m.as_str().chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
                prop_assert_eq!(m.as_str().trim(), m.as_str());
            }
            Err(e) => prop_assert!((400..500).contains(&e.status()), "{e:?}"),
        }
    }

    #[test]
    fn any_unicode_message_is_cleaned_or_refused(s in "\\PC{0,64}|[\\x00-\\x1f\\u{80}-\\u{9f} \\t\\n]{0,16}|.{1990,2010}") {
        let body = serde_json::json!({ "message": s }).to_string();
        match parse_body(body.as_bytes()) {
            Ok((m, None)) => prop_assert!(m.as_str().chars().count() <= 2000),
            Ok((_, Some(_))) => prop_assert!(false, "no sessionId was sent"),
            Err(e) => prop_assert_eq!(e.code(), "invalid_message"),
        }
    }
}

#[test]
fn deeply_nested_and_huge_bodies_are_refused_cheaply() {
    let deep = format!("{}{}", "[".repeat(8000), "]".repeat(8000));
    assert_eq!(
        parse_body(deep.as_bytes()).unwrap_err().code(),
        "invalid_json"
    );
    let deep_obj = format!("{}{}", r#"{"a":"#.repeat(3000), "}".repeat(3000));
    assert_eq!(
        parse_body(deep_obj.as_bytes()).unwrap_err().code(),
        "invalid_json"
    );
    let huge = vec![b'['; 10 * 1024 * 1024];
    // Timed: the handler's work only, not the test database or the event
    // (other tests of the one binary compete for both).
    let (r, took) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let h = Harness::new().await;
            let req = post_v2(std::str::from_utf8(&huge).unwrap(), &[]);
            let started = std::time::Instant::now();
            let r = h.send(req).await;
            (r, started.elapsed())
        });
    assert_eq!((r.status, r.code()), (413, "payload_too_large"));
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

#[test]
fn random_requests_through_the_handler_never_get_a_5xx() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(Harness::new());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 150,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop_oneof![
            json_value().prop_map(|v| v.to_string()),
            ".{0,64}",
            Just(String::new())
        ],
        prop_oneof![
            Just(""),
            Just("application/json"),
            Just("text/plain"),
            Just("application/json; charset=utf-16"),
            Just("application/vnd.api+json")
        ],
        prop_oneof![Just(""), Just("k"), Just("\u{1}bad")],
    );
    runner
        .run(&strategy, |(body, ct, key)| {
            let mut headers = vec![("content-type", ct)];
            if !key.is_empty() && key.is_ascii() && !key.contains('\u{1}') {
                headers.push(("idempotency-key", key));
            }
            let r = rt.block_on(h.send(post_v2(&body, &headers)));
            prop_assert!(r.status < 500, "{} for {body:?}: {}", r.status, r.raw);
            prop_assert_eq!(r.header("content-type"), Some("application/json"));
            Ok(())
        })
        .unwrap();
}
