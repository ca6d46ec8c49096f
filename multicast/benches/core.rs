//! Benchmarks of the multicast core; see the README.

fn main() {}
