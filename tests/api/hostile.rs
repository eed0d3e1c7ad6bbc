//! Hostile input: whatever the body, the answer is a 200 or a 4xx problem,
//! never a 5xx, never a dropped connection; and nothing is half-stored.

use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::helpers::*;

/// One service and runtime for all the generated cases.
fn shared() -> &'static (tokio::runtime::Runtime, TestApp) {
    static SHARED: OnceLock<(tokio::runtime::Runtime, TestApp)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = runtime.block_on(spawn_app_with(|c| {
            c.interval = "1h".parse().unwrap();
            c.max_body_bytes = 1 << 20;
        }));
        (runtime, app)
    })
}

/// Posts `body` and checks the answer's shape; returns the status.
fn post(body: Vec<u8>, content_type: Option<&'static str>) -> u16 {
    let (runtime, app) = shared();
    runtime.block_on(async {
        let response = app.post_ingest_raw(body, content_type).await;
        let status = response.status().as_u16();
        let ct = response.headers().get("content-type").cloned();
        let text = response.text().await.unwrap();
        assert!(
            status == 200 || (400..500).contains(&status),
            "{status}: {text}"
        );
        if status != 200 {
            assert_eq!(ct.unwrap(), "application/problem+json");
            let problem: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(problem["status"], status);
        }
        status
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![Just("HIGH"), Just("low"), Just("Medium")].prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("ids".to_owned()),
                    Just("priority".to_owned()),
                    ".{0,6}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_bytes_get_a_200_or_a_4xx(
        body in prop::collection::vec(any::<u8>(), 0..600),
        content_type in prop_oneof![Just(Some("application/json")), Just(None), Just(Some("text/plain"))],
    ) {
        post(body, content_type);
    }

    #[test]
    fn any_json_gets_a_200_or_a_4xx(value in json_value()) {
        post(serde_json::to_vec(&value).unwrap(), Some("application/json"));
    }

    #[test]
    fn any_ids_get_a_200_or_a_4xx(
        ids in prop::collection::vec(json_value(), 0..20),
        priority in json_value(),
    ) {
        let body = json!({"ids": ids, "priority": priority});
        let status = post(serde_json::to_vec(&body).unwrap(), Some("application/json"));
        let valid = ids.iter().all(|v| v.as_u64().is_some_and(|n| (1..=1_000_000_007).contains(&n)))
            && !ids.is_empty()
            && priority.as_str().is_some_and(|p| ["high", "medium", "low"].contains(&p.to_lowercase().as_str()));
        prop_assert_eq!(status == 200, valid, "{}", body);
    }
}
