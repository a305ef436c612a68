use super::*;

struct Defs(HashMap<String, AccountDef>);

impl Definitions for Defs {
    fn define(&self, account: &str) -> Option<AccountDef> {
        self.0.get(account).cloned()
    }
}

fn usd_budget(nano: u64, window: Window) -> AccountDef {
    AccountDef {
        limit: Qty {
            usd: nano,
            tokens: Qty::UNLIMITED,
            requests: Qty::UNLIMITED,
        },
        window,
        block_percent: 100,
        warn_percents: vec![50],
    }
}

fn defs(def: AccountDef) -> Defs {
    Defs([("budget/ns/b".to_string(), def)].into())
}

fn usd(n: u64) -> Option<pb::Quantity> {
    Some(pb::Quantity {
        nano_usd: n,
        ..Default::default()
    })
}

fn ask(dp: &str, seq: u64, epoch: u64, in_flight: u64, need: u64, want: u64) -> pb::UsageBatch {
    pb::UsageBatch {
        dataplane_id: dp.into(),
        sequence: seq,
        epoch,
        records: vec![],
        lease_requests: vec![pb::LeaseRequest {
            account: "budget/ns/b".into(),
            in_flight: usd(in_flight),
            need: usd(need),
            want: usd(want),
            hold: None,
            ..Default::default()
        }],
        audit_records: vec![],
    }
}

fn spend(dp: &str, seq: u64, epoch: u64, cost: u64, at: i64, period: i64) -> pb::UsageBatch {
    pb::UsageBatch {
        dataplane_id: dp.into(),
        sequence: seq,
        epoch,
        records: vec![pb::UsageRecord {
            virtual_key: "ns/k".into(),
            charges: vec![pb::Charge {
                account: "budget/ns/b".into(),
                period_start_unix_ms: period,
            }],
            cost_nano_usd: cost,
            input_tokens: 3,
            output_tokens: 4,
            requests: 1,
            lease_epoch: epoch,
            timestamp_unix_ms: at,
            ..Default::default()
        }],
        lease_requests: vec![],
        audit_records: vec![],
    }
}

fn granted(a: &Applied) -> u64 {
    a.ack.leases[0].granted.as_ref().unwrap().nano_usd
}

#[test]
fn grants_to_every_dataplane_together_stay_within_half_of_what_is_left() {
    let d = defs(usd_budget(1000, Window::Lifetime));
    let mut l = Ledger::new(10_000);
    // Three dataplanes the controller has heard from ask greedily, again and again (as a
    // waiting request does until the first answer reaches it).
    for dp in ["a", "b", "c"] {
        l.apply(&ask(dp, 1, 1, 0, 0, 0), &d, 1_000);
    }
    for round in 2..=20 {
        for dp in ["a", "b", "c"] {
            l.apply(&ask(dp, round, 1, 0, 10, 10_000), &d, 1_000);
        }
    }
    let held: Vec<u64> = ["a", "b", "c"]
        .iter()
        .map(|dp| granted(&l.apply(&ask(dp, 100, 1, 0, 0, 0), &d, 1_000)))
        .collect();
    // None holds more than its share: half of what is left, over the three.
    for h in &held {
        assert!(*h <= 1000 / 6, "held {held:?}");
    }
    assert!(held.iter().all(|h| *h >= 10), "held {held:?}");
    // So half of it is still free: a request that needs 400 beyond what a holds is
    // granted, wherever it comes.
    let a = l.apply(&ask("a", 101, 1, 0, held[0] + 400, 0), &d, 1_000);
    assert!(!a.ack.leases[0].exhausted);
    assert_eq!(granted(&a), held[0] + 400);
    let all: u64 = ["a", "b", "c"]
        .iter()
        .map(|dp| granted(&l.apply(&ask(dp, 102, 1, 0, 0, 0), &d, 1_000)))
        .sum();
    assert!(all <= 1000, "granted {all} of 1000");
}

#[test]
fn a_waiting_request_that_asks_again_is_not_granted_twice() {
    let d = defs(usd_budget(300, Window::Lifetime));
    let mut l = Ledger::new(10_000);
    for dp in ["a", "b", "c"] {
        l.apply(&ask(dp, 1, 1, 0, 0, 0), &d, 1_000);
    }
    // a's waiting request needs 96: more than a's share (300 / 6), and granted.
    assert_eq!(
        granted(&l.apply(&ask("a", 2, 1, 0, 96, 864), &d, 1_000)),
        96
    );
    // It asks again before that answer reaches it: what a holds covers it.
    assert_eq!(
        granted(&l.apply(&ask("a", 3, 1, 0, 96, 864), &d, 1_100)),
        96
    );
    // Once a's request is in flight, a needs more for the next.
    assert_eq!(
        granted(&l.apply(&ask("a", 4, 1, 96, 96, 864), &d, 1_200)),
        192
    );
    // And b's request, which needs as much, still finds it free.
    let b = l.apply(&ask("b", 2, 1, 0, 96, 864), &d, 1_300);
    assert!(!b.ack.leases[0].exhausted);
    assert_eq!(granted(&b), 96);
}

#[test]
fn settled_usage_frees_the_unspent_part_of_a_grant_and_counts_once() {
    let d = defs(usd_budget(1000, Window::Lifetime));
    let mut l = Ledger::new(10_000);
    assert_eq!(granted(&l.apply(&ask("a", 1, 1, 0, 600, 600), &d, 0)), 600);
    // b can have only what is left.
    let b = l.apply(&ask("b", 1, 1, 0, 500, 500), &d, 0);
    assert!(b.ack.leases[0].exhausted);
    // a settles 100 (its request cost less than reserved) and its grant expires.
    let s = spend("a", 2, 1, 100, 0, 0);
    assert!(l.apply(&s, &d, 1).changed);
    // A replay of the same batch is acknowledged and not counted.
    let replay = l.apply(&s, &d, 2);
    assert!(!replay.changed);
    assert_eq!(replay.ack.acked_sequence, 2);
    let view = l.view("budget/ns/b", &d, 2).unwrap();
    assert_eq!(view.spent.usd, 100);
    // Once a's grant expires with nothing in flight, b gets the rest.
    let b = l.apply(&ask("b", 2, 1, 0, 500, 500), &d, 20_001);
    assert!(!b.ack.leases[0].exhausted);
    assert_eq!(granted(&b), 500);
    // a renews with nothing in flight: its expired grant's unspent 500 is forfeit (it is
    // not revived), so only 400 are free and a request needing 500 does not fit.
    let a = l.apply(&ask("a", 3, 1, 0, 500, 500), &d, 20_002);
    assert!(a.ack.leases[0].exhausted, "{:?}", a.ack.leases[0]);
    assert_eq!(
        granted(&a),
        100,
        "the grant is what a has settled, nothing more"
    );
}

#[test]
fn a_new_epoch_carries_what_is_still_reserved() {
    let d = defs(usd_budget(1000, Window::Lifetime));
    let mut l = Ledger::new(10_000);
    assert_eq!(granted(&l.apply(&ask("a", 1, 1, 0, 300, 300), &d, 0)), 300);
    // The stream broke; on the new one, 200 is still reserved by running requests.
    let a = l.apply(&ask("a", 2, 2, 200, 0, 0), &d, 5);
    assert_eq!(granted(&a), 200);
    // Those requests settle (under epoch 2) at 150: the grant's unsettled part is 50.
    l.apply(&spend("a", 3, 2, 150, 5, 0), &d, 6);
    let b = l.apply(&ask("b", 1, 1, 0, 800, 800), &d, 7);
    assert_eq!(granted(&b), 800, "{:?}", b.ack.leases[0]);
    let c = l.apply(&ask("c", 1, 1, 0, 1, 1), &d, 7);
    assert!(c.ack.leases[0].exhausted);
}

#[test]
fn persisted_spend_and_sequences_survive_a_restart() {
    let d = defs(usd_budget(1000, Window::Lifetime));
    let mut l = Ledger::new(10_000);
    l.apply(&spend("a", 1, 1, 70, 0, 0), &d, 0);
    l.apply(&spend("a", 2, 1, 30, 0, 0), &d, 0);
    let saved = serde_json::to_string(&l.persisted()).unwrap();
    let mut restored = Ledger::restore(
        serde_json::from_str(&saved).unwrap(),
        &d,
        10_000,
        Caps::default(),
    );
    // Batch 2 again (its ack was lost) is not counted; batch 3 is.
    assert!(!restored.apply(&spend("a", 2, 1, 30, 0, 0), &d, 1).changed);
    assert!(restored.apply(&spend("a", 3, 1, 5, 0, 0), &d, 1).changed);
    assert_eq!(restored.view("budget/ns/b", &d, 1).unwrap().spent.usd, 105);
}

#[test]
fn calendar_periods_reset_spend_at_their_start_in_the_time_zone() {
    let tz = jiff::tz::TimeZone::get("America/New_York").unwrap();
    let day = Window::Calendar {
        unit: Unit::Day,
        tz: tz.clone(),
    };
    // 2026-11-22T03:00Z is 22:00 on the 21st in New York (UTC-5).
    let t: i64 = jiff::Timestamp::from_second(1_795_316_400)
        .unwrap()
        .as_millisecond();
    let (start, end) = period_of(&day, t);
    assert_eq!(
        jiff::Timestamp::from_millisecond(start)
            .unwrap()
            .to_string(),
        "2026-11-21T05:00:00Z"
    );
    assert_eq!(end - start, 24 * 3600 * 1000);
    let week = period_of(
        &Window::Calendar {
            unit: Unit::Week,
            tz: tz.clone(),
        },
        t,
    );
    // The 21st of November 2026 is a Saturday: the week began on Monday the 16th.
    assert_eq!(
        jiff::Timestamp::from_millisecond(week.0)
            .unwrap()
            .to_string(),
        "2026-11-16T05:00:00Z"
    );
    let month = period_of(
        &Window::Calendar {
            unit: Unit::Month,
            tz,
        },
        t,
    );
    assert_eq!(
        jiff::Timestamp::from_millisecond(month.1)
            .unwrap()
            .to_string(),
        "2026-12-01T05:00:00Z"
    );

    let d = defs(usd_budget(1000, day.clone()));
    let mut l = Ledger::new(10_000);
    l.apply(&ask("a", 1, 1, 0, 0, 0), &d, t);
    l.apply(&spend("a", 2, 1, 400, t, start), &d, t);
    assert_eq!(l.view("budget/ns/b", &d, t).unwrap().spent.usd, 400);
    // Late usage of the day before does not count in this one.
    l.apply(&spend("a", 3, 1, 50, t, start - 86_400_000), &d, t);
    assert_eq!(l.view("budget/ns/b", &d, t).unwrap().spent.usd, 400);
    let next = l.view("budget/ns/b", &d, end + 1).unwrap();
    assert_eq!(next.spent.usd, 0);
    assert_eq!(next.period_start_ms, end);
}

#[test]
fn rolling_windows_forget_old_spend() {
    let d = defs(usd_budget(1000, Window::Rolling { ms: 60_000 }));
    let mut l = Ledger::new(10_000);
    l.apply(&spend("a", 1, 1, 300, 1_000, 0), &d, 1_000);
    l.apply(&spend("a", 2, 1, 200, 31_000, 0), &d, 31_000);
    assert_eq!(l.view("budget/ns/b", &d, 31_000).unwrap().spent.usd, 500);
    assert_eq!(l.view("budget/ns/b", &d, 62_000).unwrap().spent.usd, 200);
    assert_eq!(l.view("budget/ns/b", &d, 92_000).unwrap().spent.usd, 0);
}

#[test]
fn states_follow_thresholds() {
    let d = defs(usd_budget(1000, Window::Lifetime));
    let mut l = Ledger::new(10_000);
    assert_eq!(l.view("budget/ns/b", &d, 0).unwrap().state, "Ok");
    l.apply(&spend("a", 1, 1, 600, 0, 0), &d, 0);
    assert_eq!(l.view("budget/ns/b", &d, 0).unwrap().state, "Warning");
    let a = l.apply(&ask("a", 2, 1, 0, 1, 1), &d, 0);
    assert!(a.ack.leases[0].warn);
    l.apply(&spend("a", 3, 1, 400, 0, 0), &d, 0);
    assert_eq!(l.view("budget/ns/b", &d, 0).unwrap().state, "Exceeded");
}

#[test]
fn a_restore_before_the_config_arrives_keeps_the_period_spend() {
    let day = Window::Calendar {
        unit: Unit::Day,
        tz: jiff::tz::TimeZone::UTC,
    };
    let d = defs(usd_budget(1000, day.clone()));
    let t = 1_795_316_400_000;
    let (start, _) = period_of(&day, t);
    let mut l = Ledger::new(10_000);
    l.apply(&spend("a", 1, 1, 70, t, start), &d, t);
    assert_eq!(l.view("budget/ns/b", &d, t).unwrap().spent.usd, 70);
    // The controller restarts: the ledger is read before any config is compiled.
    let none = Defs(HashMap::new());
    let mut restored = Ledger::restore(l.persisted(), &none, 10_000, Caps::default());
    restored.redefine(&d);
    let v = restored.view("budget/ns/b", &d, t + 1).unwrap();
    assert_eq!(v.spent.usd, 70);
    assert_eq!(v.period_start_ms, start);
}

/// A key's concurrency limit of `limit` requests in flight.
fn slot_defs(limit: u64) -> Defs {
    let def = AccountDef {
        limit: Qty {
            usd: Qty::UNLIMITED,
            tokens: Qty::UNLIMITED,
            requests: limit,
        },
        window: Window::Concurrent,
        block_percent: 100,
        warn_percents: vec![],
    };
    Defs([("conc/ns/k".to_string(), def)].into())
}

fn slots(n: u64) -> Option<pb::Quantity> {
    Some(Qty::requests(n).into())
}

/// A lease request for slots of `conc/ns/k`.
fn slot_ask(
    dp: &str,
    seq: u64,
    in_flight: u64,
    need: u64,
    want: u64,
    hold: Option<u64>,
) -> pb::UsageBatch {
    pb::UsageBatch {
        dataplane_id: dp.into(),
        sequence: seq,
        epoch: 1,
        lease_requests: vec![pb::LeaseRequest {
            account: "conc/ns/k".into(),
            in_flight: slots(in_flight),
            need: slots(need),
            want: slots(want),
            hold: hold.and_then(slots),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn concurrency_slots_are_granted_out_of_the_limit_and_come_back_when_a_grant_lapses() {
    let d = slot_defs(2);
    let ask = |dp: &str, seq: u64, in_flight: u64, need: u64| {
        slot_ask(dp, seq, in_flight, need, need, None)
    };
    let granted = |a: &Applied| a.ack.leases[0].granted.as_ref().unwrap().requests;
    let mut l = Ledger::new(1_000);
    // Two dataplanes take one slot each; a third finds none.
    let a = l.apply(&ask("dp-a", 1, 0, 1), &d, 0);
    assert_eq!(granted(&a), 1);
    let b = l.apply(&ask("dp-b", 1, 0, 1), &d, 10);
    assert_eq!(granted(&b), 1);
    let c = l.apply(&ask("dp-c", 1, 0, 1), &d, 20);
    assert!(c.ack.leases[0].exhausted);
    assert_eq!(granted(&c), 0);
    // Usage records never spend a slot.
    let used = pb::UsageBatch {
        dataplane_id: "dp-a".into(),
        sequence: 2,
        epoch: 1,
        records: vec![pb::UsageRecord {
            requests: 5,
            charges: vec![pb::Charge {
                account: "conc/ns/k".into(),
                period_start_unix_ms: 0,
            }],
            lease_epoch: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    l.apply(&used, &d, 30);
    assert_eq!(l.view("conc/ns/k", &d, 30).unwrap().spent, Qty::default());
    // dp-a's grant lapses with nothing in flight: its slot is free again.
    let c = l.apply(&ask("dp-c", 2, 0, 1), &d, 1_500);
    assert_eq!(granted(&c), 1);
    // dp-b's lapsed too, but it says its request is still in flight: that slot stays
    // taken.
    let b = l.apply(&ask("dp-b", 2, 1, 0), &d, 1_550);
    assert_eq!(granted(&b), 1);
    let a = l.apply(&ask("dp-a", 3, 0, 1), &d, 1_600);
    assert!(a.ack.leases[0].exhausted, "dp-b and dp-c hold both slots");
}

#[test]
fn a_dataplane_keeps_the_slots_it_says_it_holds_and_no_more() {
    let d = slot_defs(40);
    let hold = |dp: &str, seq: u64, in_flight: u64, need: u64, hold: u64| {
        slot_ask(dp, seq, in_flight, need, 0, Some(hold))
    };
    let lease = |a: &Applied| {
        let l = &a.ack.leases[0];
        (l.granted.as_ref().unwrap().requests, l.expires_unix_ms)
    };
    let mut l = Ledger::new(1_000);
    // Growing toward what it holds: a fair share of what is free (half of 40 for one
    // dataplane), here all 12 asked for.
    assert_eq!(lease(&l.apply(&hold("a", 1, 0, 1, 12), &d, 0)), (12, 1_000));
    // Shrinking: the rest is free at once for another dataplane, and the grant is
    // extended.
    assert_eq!(lease(&l.apply(&hold("a", 2, 3, 0, 5), &d, 500)), (5, 1_500));
    let b = l.apply(&hold("b", 1, 0, 1, 100), &d, 510);
    // 35 free, shared by two dataplanes: a quarter of it (8) goes to b.
    assert_eq!(lease(&b), (8, 1_510));
    // Never below what is in flight, whatever it says.
    assert_eq!(lease(&l.apply(&hold("a", 3, 7, 0, 2), &d, 600)).0, 7);
    // Holding what it has is a renewal, not a report: extended, nothing added.
    assert_eq!(lease(&l.apply(&hold("a", 4, 1, 0, 7), &d, 900)), (7, 1_900));
    // A grant that lapsed keeps only what was in flight before it grows again.
    let late = l.apply(&hold("a", 5, 1, 0, 3), &d, 2_000);
    assert_eq!(lease(&late), (3, 3_000));
    // b's grant lapsed too, with nothing in flight: 40 - a's 3 left for everyone else.
    assert_eq!(late.ack.leases[0].remaining.as_ref().unwrap().requests, 37);
}

#[test]
fn a_slot_ask_that_what_is_held_covers_grants_nothing_more() {
    let d = slot_defs(2);
    let ask = |dp: &str, seq: u64| slot_ask(dp, seq, 0, 1, 1, Some(1));
    let lease = |a: &Applied| {
        let l = &a.ack.leases[0];
        (l.granted.as_ref().unwrap().requests, l.exhausted)
    };
    let mut l = Ledger::new(1_000);
    // A waiting request on a: one slot asked for and granted.
    assert_eq!(lease(&l.apply(&ask("a", 1), &d, 0)), (1, false));
    // a asks the same again before its waiting request took that slot: what it holds
    // covers what it needs, and the grant stays at what it says it holds.
    assert_eq!(lease(&l.apply(&ask("a", 2), &d, 100)), (1, false));
    // So the other slot is still free for b.
    assert_eq!(lease(&l.apply(&ask("b", 1), &d, 110)), (1, false));
}

#[test]
fn a_report_of_what_is_in_flight_neither_grants_nor_extends() {
    let d = defs(usd_budget(1000, Window::Lifetime));
    let mut l = Ledger::new(1_000);
    assert_eq!(granted(&l.apply(&ask("a", 1, 1, 0, 600, 600), &d, 0)), 600);
    // Within the grant's life, a report (asking for nothing) keeps it as it is.
    let r = l.apply(&ask("a", 2, 1, 100, 0, 0), &d, 500);
    assert_eq!(granted(&r), 600);
    assert_eq!(r.ack.leases[0].expires_unix_ms, 1_000, "not extended");
    // After it lapsed, a report keeps only what is in flight, and b can have the rest.
    let r = l.apply(&ask("a", 3, 1, 100, 0, 0), &d, 1_200);
    assert_eq!(granted(&r), 100);
    assert_eq!(r.ack.leases[0].expires_unix_ms, 1_000);
    let b = l.apply(&ask("b", 1, 1, 0, 900, 900), &d, 1_300);
    assert!(!b.ack.leases[0].exhausted);
    assert_eq!(granted(&b), 900);
    // A renewal (asking for more) extends as before.
    let r = l.apply(&ask("a", 4, 1, 100, 0, 10), &d, 1_400);
    assert_eq!(r.ack.leases[0].expires_unix_ms, 2_400);
}

#[test]
fn idle_tool_and_session_accounts_are_forgotten() {
    let calls = AccountDef {
        limit: Qty {
            usd: Qty::UNLIMITED,
            tokens: Qty::UNLIMITED,
            requests: 5,
        },
        window: Window::Rolling { ms: 60_000 },
        block_percent: 100,
        warn_percents: vec![],
    };
    let names = ["tool/ns/p/0/ns/k/send", "session/ns/k/s1", "rate/ns/k"];
    let d = Defs(
        names
            .iter()
            .map(|n| (n.to_string(), calls.clone()))
            .collect(),
    );
    let one = Some(pb::Quantity {
        requests: 1,
        ..Default::default()
    });
    let ask = pb::UsageBatch {
        dataplane_id: "dp".into(),
        sequence: 1,
        epoch: 1,
        lease_requests: names
            .iter()
            .map(|n| pb::LeaseRequest {
                account: n.to_string(),
                in_flight: None,
                need: one,
                want: one,
                hold: None,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut l = Ledger::new(1_000);
    l.apply(&ask, &d, 0);
    let held = |l: &mut Ledger, at: i64| -> Vec<String> {
        let mut v: Vec<String> = l.views(at).into_iter().map(|v| v.account).collect();
        v.sort();
        v
    };
    assert_eq!(held(&mut l, 0).len(), 3);
    let minute = 60 * 1000;
    l.sweep(5 * minute);
    assert_eq!(held(&mut l, 5 * minute).len(), 3, "not idle long enough");
    l.sweep(11 * minute);
    assert_eq!(held(&mut l, 11 * minute), ["rate/ns/k", "session/ns/k/s1"]);
    l.sweep(25 * 60 * minute);
    assert_eq!(held(&mut l, 25 * 60 * minute), ["rate/ns/k"]);
}

#[test]
fn a_grant_forgotten_once_it_lapsed_starts_again_from_what_the_dataplane_settled() {
    let d = defs(usd_budget(1000, Window::Lifetime));
    let mut l = Ledger::new(1_000);
    assert_eq!(granted(&l.apply(&ask("a", 1, 1, 0, 300, 300), &d, 0)), 300);
    assert!(l.apply(&spend("a", 2, 1, 200, 10, 0), &d, 10).changed);
    // The grant lapses unused and is forgotten.
    l.sweep(2_000);
    // a's counts are cumulative (300 granted, 200 settled); a request there needs 100.
    let mut again = ask("a", 3, 1, 0, 100, 100);
    again.lease_requests[0].settled = usd(200);
    let r = l.apply(&again, &d, 2_100);
    assert!(!r.ack.leases[0].exhausted);
    // Counted from the same base, the grant leaves a room for 100, not 100 less than
    // what it has spent.
    assert_eq!(granted(&r), 300);
    // And what a holds is counted as held: b can have the rest, and once that is in
    // flight, no more.
    let b = l.apply(&ask("b", 1, 1, 0, 700, 700), &d, 2_200);
    assert!(!b.ack.leases[0].exhausted);
    assert_eq!(granted(&b), 700);
    assert!(l.apply(&ask("b", 2, 1, 700, 1, 1), &d, 2_300).ack.leases[0].exhausted);
}

/// Definitions that give every session of every key a token cap.
struct SessionDefs;

impl Definitions for SessionDefs {
    fn define(&self, account: &str) -> Option<AccountDef> {
        account.starts_with("session/").then(|| AccountDef {
            limit: Qty {
                usd: Qty::UNLIMITED,
                tokens: 1_000,
                requests: Qty::UNLIMITED,
            },
            window: Window::Lifetime,
            block_percent: 100,
            warn_percents: vec![],
        })
    }
}

fn session_ask(seq: u64, account: &str) -> pb::UsageBatch {
    pb::UsageBatch {
        dataplane_id: "dp".into(),
        sequence: seq,
        epoch: 1,
        records: vec![],
        lease_requests: vec![pb::LeaseRequest {
            account: account.into(),
            need: Some(pb::Quantity {
                tokens: 10,
                ..Default::default()
            }),
            want: Some(pb::Quantity {
                tokens: 10,
                ..Default::default()
            }),
            ..Default::default()
        }],
        audit_records: vec![],
    }
}

#[test]
fn a_flood_of_session_ids_is_refused_past_the_caps_and_others_still_granted() {
    let mut l = Ledger::new(10_000);
    l.caps = Caps {
        per_owner: 5,
        total: 8,
    };
    let now = 1_000_000;
    let mut seq = 0;
    let mut lease = |l: &mut Ledger, account: &str| {
        seq += 1;
        let a = l.apply(&session_ask(seq, account), &SessionDefs, now);
        let lease = a.ack.leases[0].clone();
        (lease.exhausted, lease.granted.unwrap().tokens)
    };
    for i in 0..5 {
        assert_eq!(
            lease(&mut l, &format!("session/ns/flood/s{i}")),
            (false, 10)
        );
    }
    // The sixth session of the same key is refused, and not kept.
    assert_eq!(lease(&mut l, "session/ns/flood/s5"), (true, 0));
    assert!(!l.persisted().accounts.contains_key("session/ns/flood/s5"));
    // Its live sessions go on being granted.
    assert_eq!(lease(&mut l, "session/ns/flood/s0"), (false, 20));
    // Another key still opens sessions, up to the total.
    for i in 0..3 {
        assert_eq!(lease(&mut l, &format!("session/ns/calm/s{i}")), (false, 10));
    }
    assert_eq!(lease(&mut l, "session/ns/calm/s3"), (true, 0));
    assert_eq!(l.refused_accounts, 2);
    // An absurdly long id is refused whatever the counts.
    l.caps.total = usize::MAX;
    let long = format!("session/ns/calm/{}", "x".repeat(600));
    assert_eq!(lease(&mut l, &long), (true, 0));
    // Idle sessions are swept, which makes room again.
    l.sweep(now + SESSION_IDLE_MS + 1);
    l.caps.total = 8;
    assert_eq!(lease(&mut l, "session/ns/flood/s9"), (false, 10));
    // Usage is counted for every account, refused ones included, never lost.
    let a = l.apply(
        &pb::UsageBatch {
            dataplane_id: "dp".into(),
            sequence: 1_000,
            epoch: 1,
            records: vec![pb::UsageRecord {
                charges: vec![pb::Charge {
                    account: "session/ns/calm/s0".into(),
                    period_start_unix_ms: 0,
                }],
                input_tokens: 4,
                requests: 1,
                ..Default::default()
            }],
            lease_requests: vec![],
            audit_records: vec![],
        },
        &SessionDefs,
        now + SESSION_IDLE_MS + 2,
    );
    assert_eq!(a.ack.acked_sequence, 1_000);
}
