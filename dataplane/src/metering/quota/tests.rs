use super::*;

fn demand(account: &str, usd: u64) -> Demand {
    Demand {
        account: Arc::from(account),
        amount: Qty {
            usd,
            tokens: 10,
            requests: 1,
        },
    }
}

fn lease(account: &str, granted_usd: u64, exhausted: bool) -> pb::QuotaLease {
    pb::QuotaLease {
        account: account.into(),
        granted: Some(pb::Quantity {
            nano_usd: granted_usd,
            tokens: 0,
            requests: 0,
        }),
        expires_unix_ms: now_ms() + 10_000,
        limited: 1,
        exhausted,
        ..Default::default()
    }
}

/// The reservation of a first request, which asks for a grant and gets `grant`.
async fn first_reservation(q: &Arc<Quotas>, d: Demand, grant: pb::QuotaLease) -> Reservation {
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.reserve(&[d], Attribution::default()).await })
    };
    while q.lease_requests().is_empty() {
        tokio::task::yield_now().await;
    }
    q.apply_leases(&[grant]);
    waiter.await.unwrap().unwrap()
}

#[tokio::test]
async fn a_request_waits_for_a_grant_then_settles_its_actual_usage() {
    let q = Quotas::new(Duration::from_secs(5), false);
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            q.reserve(&[demand("budget/ns/b", 100)], Attribution::default())
                .await
        })
    };
    // The stream sees the need and asks for it.
    let asks = loop {
        let asks = q.lease_requests();
        if !asks.is_empty() {
            break asks;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(asks[0].need.as_ref().unwrap().nano_usd, 100);
    q.apply_leases(&[lease("budget/ns/b", 250, false)]);
    let r = waiter.await.unwrap().unwrap();
    let route: Arc<str> = Arc::from("ns/r");
    r.record(
        &route,
        &route,
        &route,
        200,
        Some(crate::metering::usage::Usage {
            input: 3,
            output: 4,
            cached: 0,
            cache_write: 0,
            reasoning: 0,
            web_searches: 0,
        }),
        40,
    );
    drop(r);
    // 40 used of 250: 210 left, so two requests of 100 fit without asking.
    assert!(q.try_reserve(&[demand("budget/ns/b", 100)]).is_ok());
    assert!(q.try_reserve(&[demand("budget/ns/b", 100)]).is_ok());
    assert!(matches!(
        q.try_reserve(&[demand("budget/ns/b", 100)]),
        Err(None)
    ));
    let records = q.take_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].cost_nano_usd, 40);
    assert_eq!(records[0].input_tokens + records[0].output_tokens, 7);
    assert_eq!(records[0].charges[0].account, "budget/ns/b");
}

#[tokio::test]
async fn an_exhausted_account_refuses_and_without_a_controller_requests_wait_then_fail() {
    let q = Quotas::new(Duration::from_millis(200), false);
    let waits = crate::base::metrics::Metrics::new()
        .unwrap()
        .quota_waits
        .clone();
    q.observe_waits(waits.clone());
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            q.reserve(&[demand("budget/ns/b", 100)], Attribution::default())
                .await
        })
    };
    while q.lease_requests().is_empty() {
        tokio::task::yield_now().await;
    }
    q.apply_leases(&[lease("budget/ns/b", 50, true)]);
    assert_eq!(
        waiter.await.unwrap().unwrap_err(),
        Refusal::Exhausted {
            account: Arc::from("budget/ns/b")
        }
    );
    // Another account nobody answers for: refused as unavailable after the wait.
    let r = q
        .reserve(&[demand("budget/ns/other", 1)], Attribution::default())
        .await;
    assert!(matches!(r, Err(Refusal::Unavailable { .. })));
    // Both waits are observed, by the account's kind and how they ended.
    let count = |result: &str| {
        waits
            .with_label_values(&["budget", result])
            .get_sample_count()
    };
    assert_eq!(
        (count("refused"), count("unavailable"), count("granted")),
        (1, 1, 0)
    );
    let unavailable = waits.with_label_values(&["budget", "unavailable"]);
    assert!(
        unavailable.get_sample_sum() >= 0.2,
        "waited the full 200 ms"
    );
    // Failing open admits it, reserving nothing, and still records it.
    let open = Quotas::new(Duration::from_millis(50), true);
    let r = open
        .reserve(&[demand("budget/ns/other", 1)], Attribution::default())
        .await
        .unwrap();
    drop(r);
    assert_eq!(open.take_records()[0].requests, 1);
}

#[test]
fn a_new_epoch_carries_what_is_reserved_and_nothing_else() {
    let q = Quotas::new(Duration::from_secs(1), false);
    q.try_reserve(&[demand("budget/ns/b", 1)]).unwrap_err();
    q.apply_leases(&[lease("budget/ns/b", 500, false)]);
    let held = q.try_reserve(&[demand("budget/ns/b", 100)]).unwrap();
    assert_eq!(held.len(), 1);
    q.new_epoch();
    // Nothing may be reserved until the new stream grants; the in-flight 100 is declared.
    assert!(matches!(
        q.try_reserve(&[demand("budget/ns/b", 1)]),
        Err(None)
    ));
    let asks = q.lease_requests();
    assert_eq!(asks[0].in_flight.as_ref().unwrap().nano_usd, 100);
}

#[tokio::test]
async fn a_success_without_usage_is_charged_its_worst_case_in_every_unit() {
    let q = Quotas::new(Duration::from_secs(5), false);
    let r = first_reservation(
        &q,
        demand("budget/ns/b", 100),
        pb::QuotaLease {
            granted: Some(pb::Quantity {
                nano_usd: 1000,
                tokens: 100,
                requests: 0,
            }),
            limited: 3,
            ..lease("budget/ns/b", 1000, false)
        },
    )
    .await;
    let route: Arc<str> = Arc::from("ns/r");
    r.record(&route, &route, &route, 200, None, 0);
    drop(r);
    let records = q.take_records();
    assert_eq!(records[0].cost_nano_usd, 100);
    assert_eq!(
        records[0].input_tokens + records[0].output_tokens,
        10,
        "the tokens held for it"
    );
}

#[tokio::test]
async fn a_busy_account_asks_ahead_for_a_second_of_its_pace() {
    let q = Quotas::new(Duration::from_secs(5), false);
    let first = first_reservation(
        &q,
        demand("budget/ns/b", 10),
        lease("budget/ns/b", 700, false),
    )
    .await;
    let mut held = vec![first];
    // 60 reservations of 10 within a second leave 100, under a quarter second at this
    // pace (150), though above two typical ones (20): it asks, for a second's worth, where
    // eight typical ones (80) would run out in a blink.
    for _ in 0..59 {
        held.push(
            q.reserve(&[demand("budget/ns/b", 10)], Attribution::default())
                .await
                .unwrap(),
        );
    }
    let asks = q.lease_requests();
    assert_eq!(
        asks.len(),
        1,
        "room is below a quarter second's pace: it asks"
    );
    assert!(
        asks[0].want.as_ref().unwrap().nano_usd >= 600,
        "{:?}",
        asks[0].want
    );
}

fn slot(account: &str) -> Demand {
    Demand {
        account: Arc::from(account),
        amount: Qty::requests(1),
    }
}

fn slots_lease(account: &str, slots: u64) -> pb::QuotaLease {
    pb::QuotaLease {
        account: account.into(),
        granted: Some(pb::Quantity {
            requests: slots,
            ..Default::default()
        }),
        expires_unix_ms: now_ms() + 10_000,
        limited: tollgate_proto::quantity::REQUESTS,
        ..Default::default()
    }
}

/// Spawns `n` requests for one slot each, and waits until all of them wait.
async fn waiting_for_slots(
    q: &Arc<Quotas>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<Reservation, Refusal>>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                q.reserve(&[slot("conc/ns/k")], Attribution::default())
                    .await
            })
        })
        .collect();
    while q
        .lock()
        .accounts
        .get("conc/ns/k")
        .is_none_or(|a| a.waiters < n as u64)
    {
        tokio::task::yield_now().await;
    }
    tasks
}

#[tokio::test]
async fn a_burst_waiting_for_slots_asks_for_all_of_them_at_once() {
    let q = Quotas::new(Duration::from_secs(5), false);
    let waiting = waiting_for_slots(&q, 5).await;
    let asks = q.lease_requests();
    assert_eq!(asks.len(), 1);
    assert_eq!(asks[0].need.as_ref().unwrap().requests, 1);
    assert_eq!(
        asks[0].want.as_ref().unwrap().requests,
        5,
        "one slot per waiting request, in one round trip"
    );
    q.apply_leases(&[slots_lease("conc/ns/k", 5)]);
    for w in waiting {
        w.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_slot_given_back_goes_to_a_waiting_request_without_asking() {
    let q = Quotas::new(Duration::from_secs(5), false);
    let first = first_reservation(&q, slot("conc/ns/k"), slots_lease("conc/ns/k", 1)).await;
    let mut waiting = waiting_for_slots(&q, 1).await;
    let second = waiting.pop().unwrap();
    // The first request ends: its slot is the second's, with no lease in between.
    drop(first);
    let got = tokio::time::timeout(Duration::from_secs(2), second)
        .await
        .expect("the waiting request took the slot given back");
    got.unwrap().unwrap();
}

/// `n` requests for a slot of `conc/ns/k` that waited and run, on `lease` granting
/// them what their ask said (as the controller grants, never more than asked).
async fn running_slots(q: &Arc<Quotas>, n: u64, mut lease: pb::QuotaLease) -> Vec<Reservation> {
    let waiting = waiting_for_slots(q, n as usize).await;
    let asks = q.lease_requests();
    assert_eq!(asks[0].hold.as_ref().unwrap().requests, n);
    lease.granted = Some(Qty::requests(n).into());
    q.apply_leases(&[lease]);
    let mut running = Vec::new();
    for w in waiting {
        running.push(w.await.unwrap().unwrap());
    }
    running
}

fn reserve_slots(q: &Arc<Quotas>, n: usize) -> Vec<Reservation> {
    (0..n)
        .map(|_| {
            let held = q.try_reserve(&[slot("conc/ns/k")]).expect("a slot is free");
            q.hold(held, Attribution::default())
        })
        .collect()
}

#[tokio::test]
async fn slots_beyond_the_recent_peak_go_back_and_the_controller_is_told_what_is_held() {
    let q = Quotas::new(Duration::from_secs(5), false);
    let mut running = running_slots(&q, 10, slots_lease("conc/ns/k", 10)).await;
    // Ten held; six at the peak since the last look, two still running when the usage
    // stream looks.
    assert!(q.lease_requests().is_empty());
    running.truncate(6);
    assert!(q.lease_requests().is_empty());
    running.truncate(2);
    let asks = q.lease_requests();
    assert_eq!(asks.len(), 1);
    assert_eq!(
        asks[0].hold.as_ref().unwrap().requests,
        6,
        "the peak is held"
    );
    assert_eq!(asks[0].in_flight.as_ref().unwrap().requests, 2);
    // Given up here before the controller hears of it: four more fill the six.
    let more = reserve_slots(&q, 4);
    let room = |q: &Quotas| q.lock().accounts["conc/ns/k"].room().requests;
    assert_eq!(room(&q), 0);
    q.apply_leases(&[slots_lease("conc/ns/k", 6)]);
    // Six were in flight since the last look: the six are kept, and nothing is asked.
    drop(more);
    assert_eq!(room(&q), 4);
    let asks = q.lease_requests();
    assert!(asks.is_empty(), "{asks:?}");
    // Two in flight since: the rest goes back.
    let asks = q.lease_requests();
    assert_eq!(asks[0].hold.as_ref().unwrap().requests, 2);
    assert_eq!(room(&q), 0);
}

#[tokio::test]
async fn with_plenty_left_spare_slots_are_held_ahead_of_a_burst() {
    let q = Quotas::new(Duration::from_secs(5), false);
    let mut plenty = slots_lease("conc/ns/k", 5);
    plenty.remaining = Some(pb::Quantity {
        requests: 10_000,
        ..Default::default()
    });
    let mut running = running_slots(&q, 4, plenty.clone()).await;
    // Four in flight, and room for far more: 64 spare ones are asked for ahead of need.
    let asks = q.lease_requests();
    assert_eq!(asks.len(), 1);
    assert_eq!(asks[0].hold.as_ref().unwrap().requests, 68);
    assert_eq!(asks[0].want.as_ref().unwrap().requests, 64);
    assert_eq!(asks[0].need.as_ref().unwrap().requests, 0);
    plenty.granted.as_mut().unwrap().requests = 68;
    q.apply_leases(&[plenty.clone()]);
    // A burst of sixty-four more finds them, without asking.
    running.extend(reserve_slots(&q, 64));
    // Near the limit, none are spare: what is not in flight goes back.
    plenty.remaining.as_mut().unwrap().requests = 100;
    q.apply_leases(&[plenty.clone()]);
    running.truncate(3);
    let asks = q.lease_requests();
    assert!(
        asks.is_empty(),
        "the peak since the last look is held: {asks:?}"
    );
    let asks = q.lease_requests();
    assert_eq!(asks[0].hold.as_ref().unwrap().requests, 3);
    // Room for fewer spares than eight: none are held.
    plenty.granted.as_mut().unwrap().requests = 3;
    plenty.remaining.as_mut().unwrap().requests = 160;
    q.apply_leases(&[plenty.clone()]);
    let asks = q.lease_requests();
    assert!(asks.is_empty(), "{asks:?}");
    // Room for more than eight and fewer than 64: what is held stays within a sixteenth
    // of what is left for everyone else.
    plenty.remaining.as_mut().unwrap().requests = 448;
    q.apply_leases(&[plenty]);
    let asks = q.lease_requests();
    assert_eq!(asks[0].hold.as_ref().unwrap().requests, 28);
    drop(running);
}

#[tokio::test]
async fn a_slot_grant_in_use_is_renewed_before_it_lapses() {
    let q = Quotas::new(Duration::from_secs(5), false);
    // A grant with a second to live: less than half of its life is left at once.
    let mut short = slots_lease("conc/ns/k", 1);
    short.expires_unix_ms = now_ms() + 1_000;
    let running = first_reservation(&q, slot("conc/ns/k"), short).await;
    let asks = q.lease_requests();
    assert_eq!(asks.len(), 1, "the slot in use is renewed");
    assert_eq!(asks[0].hold.as_ref().unwrap().requests, 1);
    assert_eq!(asks[0].want.as_ref().unwrap().requests, 0, "nothing more");
    drop(running);
}

#[tokio::test]
async fn a_late_answer_to_an_earlier_ask_does_not_bring_back_slots_given_back() {
    let q = Quotas::new(Duration::from_secs(5), false);
    let room = |q: &Quotas| q.lock().accounts["conc/ns/k"].room().requests;
    // Two requests wait; the stream asks for their slots twice before an answer comes.
    let waiting = waiting_for_slots(&q, 2).await;
    let first_ask = q.lease_requests();
    let second_ask = q.lease_requests();
    assert_eq!(first_ask[0].hold.as_ref().unwrap().requests, 2);
    assert_eq!(second_ask[0].hold.as_ref().unwrap().requests, 2);
    // The first answer comes; both run and end.
    q.apply_leases(&[slots_lease("conc/ns/k", 2)]);
    for w in waiting {
        drop(w.await.unwrap().unwrap());
    }
    // The peak is kept one look, then the slots go back: given up here, and the
    // controller is told.
    assert!(q.lease_requests().is_empty());
    let release = q.lease_requests();
    assert_eq!(release[0].hold.as_ref().unwrap().requests, 0);
    assert_eq!(room(&q), 0);
    // The answer to the second ask, made before the release, comes after it: the
    // controller has since counted the slots as free, so they are not used here.
    q.apply_leases(&[slots_lease("conc/ns/k", 2)]);
    assert_eq!(room(&q), 0, "slots given back are used again");
    // The release's own answer.
    q.apply_leases(&[slots_lease("conc/ns/k", 0)]);
    assert_eq!(room(&q), 0);
}

/// A billed attempt that reported nothing is charged what it reserved; the attempt after
/// it reserves another worst case on the same accounts (no concurrency slot, no second
/// request), and each is settled on its own: together they never charge more than they
/// reserved.
#[tokio::test]
async fn a_billed_attempt_is_charged_its_worst_case_and_the_next_one_reserves_again() {
    let q = Quotas::new(Duration::from_secs(5), false);
    let first = first_reservation(
        &q,
        demand("budget/ns/b", 100),
        lease("budget/ns/b", 250, false),
    )
    .await;
    let route: Arc<str> = Arc::from("ns/r");
    // The attempt timed out: its worst case is charged, and it counts as charged.
    assert!(!first.charged());
    first.charge_worst(&route, &route, &route, 504);
    assert!(first.charged());
    let second = q.extend(&first, 1).await.unwrap();
    // 100 + 100 of 250 held: no third worst case fits without asking.
    assert!(matches!(
        q.try_reserve(&[demand("budget/ns/b", 100)]),
        Err(None)
    ));
    second.record(
        &route,
        &route,
        &route,
        200,
        Some(crate::metering::usage::Usage {
            input: 3,
            output: 4,
            ..Default::default()
        }),
        30,
    );
    drop(second);
    drop(first);
    let records = q.take_records();
    let cost: u64 = records.iter().map(|r| r.cost_nano_usd).sum();
    let requests: u64 = records.iter().map(|r| r.requests).sum();
    assert_eq!(
        cost,
        100 + 30,
        "the worst case of the first, the usage of the second"
    );
    assert_eq!(requests, 1, "one request, however many attempts");
    // What is left of the grant: 250 - 130.
    assert!(q.try_reserve(&[demand("budget/ns/b", 120)]).is_ok());
}
