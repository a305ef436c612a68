//! A setting both binaries make for their own process as they start.

/// Transparent huge pages off for this process. The kernel otherwise backs what mimalloc
/// touches of its arenas with 2 MiB pages where it can, zeroing each whole on first
/// touch: an idle dataplane held 10 MiB of them for a few bytes used, and a controller
/// listing 200,000 objects spent a third of its CPU clearing them (served 4.6-5.0 s after
/// start without them, 6.0 s with; docs/benchmarks.md). The setting applies to pages
/// faulted in from then on, so it is made as `main` starts. Returns whether it was made
/// (an old kernel may refuse).
#[cfg(target_os = "linux")]
pub fn no_huge_pages() -> bool {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes nothing but
    // the process's huge page policy; a failure leaves it as is.
    #[allow(unsafe_code)]
    let status = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    status == 0
}

#[cfg(not(target_os = "linux"))]
pub fn no_huge_pages() -> bool {
    true
}
