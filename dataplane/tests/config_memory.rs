//! What the dataplane holds per VirtualKey once a large config is applied, counted by a
//! global allocator that tracks live bytes: deterministic, unlike the process's RSS, which
//! the benchmark reads (10,000 keys within 40 MiB, see docs/benchmarks.md).
#![allow(clippy::unwrap_used, clippy::print_stdout, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use tollgate_dataplane::config::store::{Store, resource};
use tollgate_proto::{self as pb, DeltaConfigResponse, resource::Body, type_url};

/// The system allocator, counting the bytes allocated and not yet freed.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed unchanged to the system allocator; the counter is a
// side effect only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: `ptr` came from `alloc` above, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const KEYS: usize = 10_000;

/// Keys as the controller sends them: an owner, and a version per resource.
fn keys() -> DeltaConfigResponse {
    let resources = (0..KEYS)
        .map(|i| {
            let team = format!("team-{}", i % 50);
            let mut key_sha256 = vec![0u8; 32];
            key_sha256[..8].copy_from_slice(&(i as u64).to_le_bytes());
            resource(
                &format!("default/key-{i}"),
                "0123456789abcdef",
                Body::VirtualKey(pb::VirtualKey {
                    namespace: "default".into(),
                    name: format!("key-{i}"),
                    key_sha256,
                    owner: Some(pb::Owner {
                        team,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            )
        })
        .collect();
    DeltaConfigResponse {
        type_url: type_url::VIRTUAL_KEY.into(),
        resources,
        ..Default::default()
    }
}

#[test]
fn a_virtual_key_costs_the_dataplane_well_under_a_kilobyte() {
    let before = LIVE_BYTES.load(Relaxed);
    let response = keys();
    let mut store = Store::default();
    assert!(store.apply(&response).errors.is_empty());
    drop(response);
    let snapshot = store.snapshot();
    assert_eq!(snapshot.keys.len(), KEYS);
    let per_key = (LIVE_BYTES.load(Relaxed) - before) / KEYS as isize;
    println!("held per key, store and snapshot: {per_key} bytes");
    // 939 bytes when each key kept its id and owner twice, its name and version once more
    // for the snapshot, and its labels (560 bytes more with one label); 633 without.
    assert!(per_key < 800, "{per_key} bytes per key");
}
