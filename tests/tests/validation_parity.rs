//! Local mode judges every object of the validation parity table as the table says (the
//! real API server's half runs in `cluster_e2e.rs`): the controller reads the objects from
//! a manifests directory, and its `/status` gives each one's `Accepted`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_tests::harness::{bin, controller_tls, free_port, http_get, start_ready};
use tollgate_tests::validation::cases;

#[test]
fn local_mode_judges_the_table_as_the_api_server_does() {
    let cases = cases().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    for (i, c) in cases.iter().enumerate() {
        std::fs::write(
            manifests.join(format!("{i:02}.yaml")),
            serde_json::to_string(&c.object).unwrap(),
        )
        .unwrap();
    }
    let token = dir.path().join("token");
    std::fs::write(&token, "parity-token").unwrap();
    let mut admin = 0;
    let controller = start_ready(
        "controller",
        &bin("tollgate-controller").unwrap(),
        dir.path(),
        || {
            admin = free_port()?;
            let mut args = vec![
                "--manifests".to_string(),
                manifests.display().to_string(),
                "--xds-listen".into(),
                format!("127.0.0.1:{}", free_port()?),
                "--admin-listen".into(),
                format!("127.0.0.1:{admin}"),
                "--token-file".into(),
                token.display().to_string(),
            ];
            args.extend(controller_tls(dir.path()));
            Ok((args, format!("http://127.0.0.1:{admin}/readyz")))
        },
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let objects = loop {
        let (_, body) = http_get(&format!("http://127.0.0.1:{admin}/status")).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let objects = v["objects"].as_array().cloned().unwrap_or_default();
        if objects.len() >= cases.len() {
            break objects;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} objects reported: {body}\n{}",
            objects.len(),
            cases.len(),
            controller.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut disagreements = vec![];
    for c in &cases {
        let report = objects
            .iter()
            .find(|o| o["kind"] == c.kind() && o["name"] == c.name())
            .unwrap_or_else(|| panic!("no report for {} {}", c.kind(), c.name()));
        let accepted = report["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["type"] == "Accepted")
            .unwrap();
        let verdict = if accepted["status"] == "True" {
            Ok(())
        } else {
            Err(accepted["message"].as_str().unwrap_or_default().to_string())
        };
        disagreements.extend(c.disagreement(&verdict, "local mode"));
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} cases disagree:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
}
