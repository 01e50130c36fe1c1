//! The harness is the `rendezvous-test-support` crate (tests/support); this path
//! stays for test binaries that still say `mod common;`.
pub use rendezvous_test_support::*;
