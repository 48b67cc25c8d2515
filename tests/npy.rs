//! The command-line tool's .npy reader and writer (`examples/wgpu-norm/npy.rs`) against random
//! bytes, truncations and mutated headers: only clear errors, never a panic or an allocation
//! the file cannot back; and the tool's arguments, at random: bad input is exit code 2 and one
//! line, and an existing output file is replaced whole or not at all. No GPU needed for the
//! reader; the arguments run the tool.

#[path = "../examples/wgpu-norm/npy.rs"]
#[allow(dead_code)]
mod npy;

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::tool;
use proptest::prelude::*;
use wgpu_norm::DType;

/// A new directory of its own for each call: the tests run in parallel.
fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("wgpu-norm-npy-{}-{name}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The bytes of a valid file.
fn valid(shape: &[u64], data: &[f32], dtype: DType) -> Vec<u8> {
    let dir = scratch("valid");
    let path = dir.join("valid.npy");
    npy::write(&path, shape, data, dtype).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    bytes
}

/// A .npy file with `header` as its dictionary (version 1.0, padded to 64 bytes) and `body`.
fn with_header(header: &str, body: &[u8]) -> Vec<u8> {
    let mut text = header.to_string();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((text.len() as u16).to_le_bytes());
    out.extend(text.as_bytes());
    out.extend(body);
    out
}

fn read_bytes(bytes: &[u8], name: &str) -> Result<npy::Array, String> {
    let dir = scratch("read");
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let r = npy::read(&path);
    let _ = std::fs::remove_dir_all(dir);
    r
}

/// What a successful read must be: as many values as the shape says.
fn consistent(r: &Result<npy::Array, String>) {
    match r {
        Ok(a) => assert_eq!(a.data.len() as u64, a.shape.iter().product::<u64>()),
        Err(e) => {
            assert!(!e.is_empty() && !e.contains('\n'), "one line: {e:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn written_files_read_back(
        shape in prop::collection::vec(1u64..5, 1..4),
        half in any::<bool>(),
        seed in any::<u32>(),
    ) {
        let n: u64 = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| ((i as f32 + seed as f32) * 0.37).sin()).collect();
        let dtype = if half { DType::F16 } else { DType::F32 };
        let a = read_bytes(&valid(&shape, &data, dtype), "roundtrip.npy").unwrap();
        prop_assert_eq!(&a.shape, &shape);
        prop_assert_eq!(a.dtype, dtype);
        let want: Vec<f32> = data.iter().map(|&v| dtype.round(f64::from(v)) as f32).collect();
        prop_assert_eq!(a.data, want);
    }

    #[test]
    fn random_bytes_are_errors(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        consistent(&read_bytes(&bytes, "random.npy"));
    }

    #[test]
    fn random_bytes_after_a_valid_magic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        file.extend(bytes);
        consistent(&read_bytes(&file, "magic.npy"));
    }

    #[test]
    fn every_truncation_is_an_error(cut in 0usize..1000) {
        let file = valid(&[3, 7], &[0.5; 21], DType::F32);
        let cut = cut % file.len();
        let r = read_bytes(&file[..cut], "cut.npy");
        prop_assert!(r.is_err(), "{} of {} bytes read as a whole file", cut, file.len());
        consistent(&r);
    }

    #[test]
    fn mutated_headers(
        dims in prop::collection::vec(
            prop_oneof![
                0i64..5,
                Just(-1i64),
                Just(1i64 << 40),
                Just(i64::MAX),
                Just(1i64 << 62),
            ],
            0..4,
        ),
        descr in prop::sample::select(vec![
            "<f4", ">f4", "<f2", "<f8", "<i4", "|u1", "|b1", "<c8", "O", "<U3", "V8", "<f16", "x",
        ]),
        fortran in any::<bool>(),
        body_len in 0usize..200,
    ) {
        let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        let shape = match shape.len() {
            1 => format!("({},)", shape[0]),
            _ => format!("({})", shape.join(", ")),
        };
        let header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        let r = read_bytes(&with_header(&header, &vec![0x3c; body_len]), "mutated.npy");
        consistent(&r);
        if let Ok(a) = &r {
            // Only what the reader supports, and only as much as the file holds.
            prop_assert!(!fortran);
            prop_assert!(matches!(descr, "<f4" | ">f4" | "<f2"));
            prop_assert!(a.data.len() * 2 <= body_len);
        }
    }
}

#[test]
fn shapes_larger_than_the_file_are_refused_before_reading() {
    for shape in [
        "(1099511627776, 1099511627776)",
        "(4611686018427387904,)",
        "(1000000,)",
    ] {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        let err = read_bytes(&with_header(&header, &[0; 64]), "huge.npy")
            .err()
            .expect("refused");
        assert!(
            err.contains("bytes") || err.contains("counted") || err.contains("valid"),
            "{err}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Arguments from a mix of good and bad ones: exit code 0 (then the output is a new, valid
    /// file), 2 with one line on stderr (then the output holds what it held), never a panic.
    #[test]
    fn random_arguments(
        args in prop::collection::vec(
            prop::sample::select(vec![
                "--op", "layer-norm", "rms-norm", "other", "--input", "x.npy", "bad.npy",
                "missing.npy", "--weight", "w.npy", "--bias", "--eps", "1e-5", "-1", "nan",
                "--axis", "-1", "0", "5", "--mean", "--rstd", "--rrms", "m.npy", "--check",
            ]),
            0..8,
        ),
    ) {
        let dir = scratch("args");
        std::fs::write(dir.join("x.npy"), valid(&[2, 6], &[0.25; 12], DType::F32)).unwrap();
        std::fs::write(dir.join("w.npy"), valid(&[6], &[1.5; 6], DType::F32)).unwrap();
        std::fs::write(dir.join("bad.npy"), b"\x93NUMPY\x01\x00garbage").unwrap();
        std::fs::write(dir.join("y.npy"), b"old contents").unwrap();
        let out = tool()
            .current_dir(&dir)
            .arg("run")
            .args(["--input", "x.npy"])
            .args(&args)
            .args(["--output", "y.npy"])
            .output()
            .unwrap();
        let code = out.status.code();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("adapter:") && !l.contains("XDG_RUNTIME_DIR"))
            .collect();
        let y = std::fs::read(dir.join("y.npy")).unwrap();
        match code {
            Some(0) => prop_assert!(npy::read(&dir.join("y.npy")).is_ok()),
            Some(2) => {
                prop_assert_eq!(complaints.len(), 1, "one line for {:?}: {}", args, stderr);
                prop_assert_eq!(&y[..], b"old contents");
            }
            other => prop_assert!(false, "exit {other:?} for {args:?}: {stderr}"),
        }
        let leftovers = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        prop_assert_eq!(leftovers, 0, "temporary files left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
