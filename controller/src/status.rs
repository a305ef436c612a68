//! An object's full set of conditions: what the compiler said (`Accepted`, `ResolvedRefs`)
//! and what the dataplanes did with it (`Programmed`, from their ACKs and NACKs). Shared by
//! the admin `/status` page and the status written to Kubernetes objects, so both tell the
//! same story.

use serde_json::{Value, json};

use crate::compile::{Condition, ConditionType, ObjectReport, Reason};
use crate::tracker::{AckView, Tracker};

/// `Programmed`: true only when every connected dataplane holds the object's current
/// version and the object does what it says (its references resolve, and a route is
/// reachable); the message gives the count, and a NACK's reason is shown. Unknown while no
/// dataplane is connected: nobody has said what runs.
pub fn programmed(report: &ObjectReport, acks: &impl AckView) -> Condition {
    let accepted = report
        .condition(ConditionType::Accepted)
        .is_some_and(|c| c.status == "True");
    let Some(served) = report.resource.as_ref().filter(|_| accepted) else {
        return Condition::new(
            ConditionType::Programmed,
            false,
            Reason::NotServed,
            "the object is not sent to dataplanes until it is accepted and its references resolve",
        );
    };
    let p = acks.programmed(served.type_url, &served.name, &served.version);
    let message = format!("applied by {} of {} dataplanes", p.applied, p.connected);
    let failing = |type_: ConditionType| {
        report
            .condition(type_)
            .filter(|c| c.status == "False")
            .map(|c| (c.reason, c.message.clone()))
    };
    if !p.rejections.is_empty() {
        let message = format!("{message}; {}", p.rejections.join("; "));
        Condition::new(ConditionType::Programmed, false, Reason::Rejected, message)
    } else if let Some((reason, why)) =
        failing(ConditionType::ResolvedRefs).or_else(|| failing(ConditionType::Reachable))
    {
        Condition::new(
            ConditionType::Programmed,
            false,
            reason,
            format!("{why}; {message}"),
        )
    } else if p.connected == 0 {
        Condition::unknown(ConditionType::Programmed, Reason::NoDataplanes, message)
    } else if p.applied == p.connected {
        Condition::new(ConditionType::Programmed, true, Reason::Programmed, message)
    } else {
        Condition::new(ConditionType::Programmed, false, Reason::Pending, message)
    }
}

/// The report with `Programmed` added.
pub fn with_programmed(report: &ObjectReport, tracker: &Tracker) -> ObjectReport {
    let mut r = report.clone();
    r.conditions.push(programmed(report, tracker));
    r
}

/// Longest condition message the Kubernetes API accepts.
const MAX_MESSAGE: usize = 32_768;

/// The `status` to write for an object of `generation` with `conditions`. A condition keeps
/// its `lastTransitionTime` from `current` (the status the object has now) unless its
/// `status` changed; `now` is an RFC 3339 time.
pub fn object_status(
    conditions: &[Condition],
    generation: Option<i64>,
    current: &Value,
    now: &str,
) -> Value {
    let previous = |type_: ConditionType| {
        current
            .get("conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_.as_str()))
    };
    let conditions: Vec<Value> = conditions
        .iter()
        .map(|c| {
            let since = previous(c.type_)
                .filter(|p| p["status"] == c.status)
                .and_then(|p| p["lastTransitionTime"].as_str())
                .unwrap_or(now);
            let message = shortened(&c.message, MAX_MESSAGE);
            let mut v = json!({
                "type": c.type_,
                "status": c.status,
                "reason": c.reason,
                "message": message,
                "lastTransitionTime": since,
            });
            if let Some(g) = generation {
                v["observedGeneration"] = json!(g);
            }
            v
        })
        .collect();
    let mut status = json!({ "conditions": conditions });
    if let Some(g) = generation {
        status["observedGeneration"] = json!(g);
    }
    status
}

/// `text`, cut to at most `max` bytes (on a character boundary) and ending in "..." if
/// it was longer: the API refuses a condition message or an Event note past its limit.
pub fn shortened(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max.saturating_sub(3);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

/// Whether `current` already says what `desired` does: the fields this controller owns
/// (observedGeneration and the conditions it writes) are equal.
pub fn up_to_date(current: &Value, desired: &Value) -> bool {
    if current.get("observedGeneration") != desired.get("observedGeneration") {
        return false;
    }
    let Some(wanted) = desired.get("conditions").and_then(Value::as_array) else {
        return true;
    };
    let have = current.get("conditions").and_then(Value::as_array);
    wanted.iter().all(|w| {
        have.is_some_and(|h| {
            h.iter().any(|c| {
                ["type", "status", "reason", "message", "observedGeneration"]
                    .iter()
                    .all(|f| c.get(*f) == w.get(*f))
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::ServedAs;

    fn report(accepted: bool) -> ObjectReport {
        ObjectReport {
            kind: "LLMRoute".into(),
            namespace: "ns".into(),
            name: "r".into(),
            origin: "cluster".into(),
            conditions: vec![Condition {
                type_: ConditionType::Accepted,
                status: if accepted { "True" } else { "False" },
                reason: if accepted {
                    Reason::Accepted
                } else {
                    Reason::Invalid
                },
                message: String::new(),
            }],
            resource: Some(ServedAs {
                type_url: "t",
                name: "ns/r".into(),
                version: "v1".into(),
            }),
        }
    }

    #[test]
    fn programmed_counts_acks_and_shows_nacks() {
        let tracker = Tracker::default();
        let r = report(true);
        let c = programmed(&r, &tracker);
        assert_eq!((c.status, c.reason.as_str()), ("Unknown", "NoDataplanes"));
        assert_eq!(c.message, "applied by 0 of 0 dataplanes");
        let (a, b) = (tracker.connect(), tracker.connect());
        tracker.identify(b, "dp-b");
        tracker.ack(a, "t", "ns/r", "v1");
        let c = programmed(&r, &tracker);
        assert_eq!(
            (c.status, c.message.as_str()),
            ("False", "applied by 1 of 2 dataplanes")
        );
        tracker.nack(b, "t", "ns/r", "v1", "bad endpoint");
        let c = programmed(&r, &tracker);
        assert_eq!(c.reason, "Rejected");
        assert_eq!(
            c.message,
            "applied by 1 of 2 dataplanes; dataplane dp-b: bad endpoint"
        );
        tracker.ack(b, "t", "ns/r", "v1");
        let c = programmed(&r, &tracker);
        assert_eq!(
            (c.status, c.message.as_str()),
            ("True", "applied by 2 of 2 dataplanes")
        );
        // An older version acknowledged does not count.
        tracker.ack(b, "t", "ns/r", "v0");
        assert_eq!(programmed(&r, &tracker).status, "False");
        assert_eq!(programmed(&report(false), &tracker).reason, "NotServed");
        // Served to every dataplane, but a reference is missing or the route is shadowed:
        // not Programmed, with the reason.
        tracker.ack(b, "t", "ns/r", "v1");
        for (type_, reason) in [
            (ConditionType::ResolvedRefs, Reason::RefNotFound),
            (ConditionType::Reachable, Reason::Shadowed),
        ] {
            let mut r = report(true);
            r.conditions
                .push(Condition::new(type_, false, reason, "why"));
            let c = programmed(&r, &tracker);
            assert_eq!((c.status, c.reason), ("False", reason));
            assert_eq!(c.message, "why; applied by 2 of 2 dataplanes");
        }
    }

    #[test]
    fn transition_times_move_only_when_a_status_changes() {
        let c = |type_, ok: bool| Condition {
            type_,
            status: if ok { "True" } else { "False" },
            reason: Reason::Pending,
            message: "m".into(),
        };
        let first = object_status(
            &[
                c(ConditionType::Accepted, true),
                c(ConditionType::Programmed, false),
            ],
            Some(4),
            &Value::Null,
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(first["observedGeneration"], 4);
        assert_eq!(
            first["conditions"][1]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(first["conditions"][1]["observedGeneration"], 4);
        let second = object_status(
            &[
                c(ConditionType::Accepted, true),
                c(ConditionType::Programmed, true),
            ],
            Some(4),
            &first,
            "2026-01-02T00:00:00Z",
        );
        assert_eq!(
            second["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            second["conditions"][1]["lastTransitionTime"],
            "2026-01-02T00:00:00Z"
        );
        assert!(up_to_date(&second, &second));
        assert!(!up_to_date(&first, &second));
        let newer = object_status(&[c(ConditionType::Accepted, true)], Some(5), &second, "x");
        assert!(
            !up_to_date(&second, &newer),
            "a new generation is always written"
        );
        assert!(!up_to_date(&Value::Null, &newer));
        let long = Condition {
            message: "é".repeat(20_000),
            ..c(ConditionType::Accepted, false)
        };
        let s = object_status(&[long], None, &Value::Null, "t");
        let m = s["conditions"][0]["message"].as_str().unwrap();
        assert!(m.len() <= MAX_MESSAGE && m.ends_with("..."));
        // The same cut for an Event's 1 kB note: a two-byte character is never split.
        assert_eq!(shortened("short", 1000), "short");
        let note = shortened(&"é".repeat(600), 1000);
        assert_eq!(note, format!("{}...", "é".repeat(498)));
        assert!(s.get("observedGeneration").is_none());
    }
}
