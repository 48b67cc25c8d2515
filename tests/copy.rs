//! The benchmarks' baseline copy is exact: every element, nothing outside the output.

mod common;

use common::{check_copy, gpu, small_binding_gpu};

#[test]
fn copies_exactly() {
    for (rows, dim, offset) in [
        (1, 1, 0),
        (70000, 3, 4),
        (257, 1024, 16),
        (3, 4097, 0),
        (2, 65536, 272),
    ] {
        check_copy(gpu(), rows, dim, offset);
    }
    let small = small_binding_gpu(256 << 10);
    check_copy(small, 300, 1000, 12);
}
