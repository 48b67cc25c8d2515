//! The command-line tool (examples/wgpu-norm.rs), driven as a user would: built by
//! `cargo test`, run as a process on the test machine's adapter.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Rng, assert_close, tool};
use wgpu_norm::reference;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgpu-norm-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes an .npy file of any element type and order.
fn save_as<T: npyz::AutoSerialize>(path: &Path, shape: &[u64], data: Vec<T>, order: npyz::Order) {
    use npyz::WriterBuilder;
    let mut f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(shape)
        .order(order)
        .writer(&mut f)
        .begin_nd()
        .unwrap();
    w.extend(data).unwrap();
    w.finish().unwrap();
}

fn save(path: &Path, shape: &[u64], data: &[f32]) {
    save_as(path, shape, data.to_vec(), npyz::Order::C);
}

fn load(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let npy = npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec().unwrap())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn run_layer_norm_over_the_last_two_axes() {
    let dir = scratch("ln");
    let mut rng = Rng::new(5);
    let shape = [3u64, 4, 5, 6];
    let x = rng.data(360, 1.0, 2.0);
    let w = rng.data(30, 1.0, 0.3);
    let b = rng.data(30, 0.0, 0.3);
    save(&dir.join("x.npy"), &shape, &x);
    save(&dir.join("w.npy"), &[5, 6], &w);
    save(&dir.join("b.npy"), &[5, 6], &b);
    let out = run(tool().current_dir(&dir).args([
        "run",
        "--op",
        "layer-norm",
        "--input",
        "x.npy",
        "--weight",
        "w.npy",
        "--bias",
        "b.npy",
        "--axis",
        "-2",
        "--eps",
        "1e-3",
        "--output",
        "y.npy",
        "--mean",
        "m.npy",
        "--rstd",
        "r.npy",
        "--check",
    ]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("largest error"));
    let r = reference::layer_norm(&x, 30, Some(&w), Some(&b), 1e-3);
    let (ys, y) = load(&dir.join("y.npy"));
    assert_eq!(ys, shape);
    assert_close(&y, &r.y, "y");
    let (ms, m) = load(&dir.join("m.npy"));
    assert_eq!(ms, [3, 4, 1, 1]);
    assert_close(&m, &r.mean, "mean");
    let (rs, rstd) = load(&dir.join("r.npy"));
    assert_eq!(rs, [3, 4, 1, 1]);
    let rel = rstd
        .iter()
        .zip(&r.rstd)
        .map(|(&g, &e)| (f64::from(g) - e).abs() / e);
    assert!(rel.fold(0.0, f64::max) < 1e-5);
}

#[test]
fn run_rms_norm_with_defaults() {
    let dir = scratch("rms");
    let x = Rng::new(6).data(2 * 1000, 0.0, 1.0);
    save(&dir.join("x.npy"), &[2, 1000], &x);
    let out = run(tool().current_dir(&dir).args([
        "run", "--op", "rms-norm", "--input", "x.npy", "--output", "y.npy", "--rrms", "r.npy",
    ]));
    assert!(out.status.success());
    let r = reference::rms_norm(&x, 1000, None, f32::EPSILON);
    assert_close(&load(&dir.join("y.npy")).1, &r.y, "y");
    assert_eq!(load(&dir.join("r.npy")).0, [2, 1]);
}

/// Runs the tool expecting bad input: exit code 2, one line naming the problem, and the old
/// output file untouched.
fn rejects(dir: &Path, args: &[&str], needle: &str) {
    let y = dir.join("y.npy");
    std::fs::write(&y, b"previous output").unwrap();
    let mut all = vec!["run", "--output", "y.npy"];
    if !args.contains(&"--op") {
        all.extend(["--op", "layer-norm"]);
    }
    all.extend(args);
    let out = run(tool().current_dir(dir).args(&all));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
        .collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line expected: {stderr}");
    assert!(
        lines[0].to_lowercase().contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        lines[0]
    );
    assert_eq!(
        std::fs::read(&y).unwrap(),
        b"previous output",
        "{args:?} touched the output"
    );
    let leftovers = std::fs::read_dir(dir).unwrap().filter_map(|e| {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        name.ends_with(".tmp").then_some(name)
    });
    assert_eq!(leftovers.count(), 0, "temporary files left behind");
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let dir = scratch("bad");
    let x = Rng::new(7).data(24, 0.0, 1.0);
    save(&dir.join("x.npy"), &[4, 6], &x);
    save(&dir.join("w5.npy"), &[5], &x[..5]);
    let good = std::fs::read(dir.join("x.npy")).unwrap();
    std::fs::write(dir.join("trunc.npy"), &good[..good.len() - 10]).unwrap();
    std::fs::write(
        dir.join("garbage.npy"),
        b"\x93NUMPY\x01\x00\x10\x00{'descr': nonsense",
    )
    .unwrap();
    std::fs::write(dir.join("text.npy"), b"this is not an npy file at all").unwrap();
    save_as(
        &dir.join("fortran.npy"),
        &[4, 6],
        x.clone(),
        npyz::Order::Fortran,
    );
    let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    save_as(&dir.join("f64.npy"), &[4, 6], x64, npyz::Order::C);
    save_as(
        &dir.join("i32.npy"),
        &[24],
        (0..24i32).collect(),
        npyz::Order::C,
    );
    // A float16 header ('<f2') with matching data.
    let mut f16 = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<f2', 'fortran_order': False, 'shape': (4, 6), }";
    let pad = 64 - (10 + header.len() + 1) % 64;
    let header = format!("{header}{}\n", " ".repeat(pad));
    f16.extend((header.len() as u16).to_le_bytes());
    f16.extend(header.as_bytes());
    f16.extend([0u8; 48]);
    std::fs::write(dir.join("f16.npy"), f16).unwrap();

    rejects(&dir, &["--input", "missing.npy"], "missing.npy");
    rejects(&dir, &["--input", "trunc.npy"], "truncated");
    rejects(&dir, &["--input", "garbage.npy"], "not a valid .npy");
    rejects(&dir, &["--input", "text.npy"], "not a valid .npy");
    rejects(&dir, &["--input", "fortran.npy"], "fortran");
    rejects(&dir, &["--input", "f64.npy"], "unsupported dtype");
    rejects(&dir, &["--input", "i32.npy"], "unsupported dtype");
    // A '<V2' (void) array, as bfloat16 arrives from ml_dtypes: not a float this tool knows.
    let mut v2 = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<V2', 'fortran_order': False, 'shape': (4, 6), }";
    let pad = 64 - (10 + header.len() + 1) % 64;
    let header = format!("{header}{}\n", " ".repeat(pad));
    v2.extend((header.len() as u16).to_le_bytes());
    v2.extend(header.as_bytes());
    v2.extend([0u8; 48]);
    std::fs::write(dir.join("v2.npy"), v2).unwrap();
    rejects(&dir, &["--input", "v2.npy"], "unsupported dtype");
    rejects(&dir, &["--input", "x.npy", "--axis", "2"], "axis");
    rejects(&dir, &["--input", "x.npy", "--axis", "-3"], "axis");
    rejects(&dir, &["--input", "x.npy", "--weight", "w5.npy"], "shape");
    rejects(&dir, &["--input", "x.npy", "--eps", "-1"], "epsilon");
    rejects(&dir, &["--input", "x.npy", "--eps", "nan"], "epsilon");
    rejects(&dir, &["--input", "x.npy", "--eps", "abc"], "invalid value");
    rejects(
        &dir,
        &["--input", "x.npy", "--op", "rms-norm", "--bias", "w5.npy"],
        "bias",
    );
    // Each norm's statistics by their own names.
    rejects(
        &dir,
        &["--input", "x.npy", "--op", "rms-norm", "--rstd", "r.npy"],
        "--rrms",
    );
    rejects(
        &dir,
        &["--input", "x.npy", "--rrms", "r.npy"],
        "rms-norm only",
    );
}

#[test]
fn run_float16_gives_float16() {
    let dir = scratch("f16");
    let x: Vec<f32> = Rng::new(9)
        .data(3 * 70, 1.0, 2.0)
        .into_iter()
        .map(|v| half::f16::from_f32(v).to_f32())
        .collect();
    save_as(
        &dir.join("x.npy"),
        &[3, 70],
        x.iter().map(|&v| half::f16::from_f32(v)).collect(),
        npyz::Order::C,
    );
    let w = Rng::new(10).data(70, 1.0, 0.2);
    save(&dir.join("w.npy"), &[70], &w);
    let out = run(tool().current_dir(&dir).args([
        "run", "--op", "rms-norm", "--input", "x.npy", "--weight", "w.npy", "--eps", "1e-5",
        "--output", "y.npy", "--check",
    ]));
    assert!(out.status.success());
    let npy = npyz::NpyFile::new(std::fs::File::open(dir.join("y.npy")).unwrap()).unwrap();
    assert_eq!(npy.dtype().descr(), "'<f2'");
    let y: Vec<f32> = npy
        .into_vec::<half::f16>()
        .unwrap()
        .into_iter()
        .map(half::f16::to_f32)
        .collect();
    let r = reference::rms_norm(&x, 70, Some(&w), 1e-5);
    let (ratio, i) = reference::worst_error_in(wgpu_norm::DType::F16, &y, &r.y);
    assert!(ratio <= 1.0, "y[{i}] = {} vs {}", y[i], r.y[i]);
}

#[test]
fn info_lists_adapters_and_the_choice() {
    let out = run(tool().arg("info"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[0] ") && text.contains("would use: "),
        "{text}"
    );
    assert!(
        text.contains("subgroups:") && text.contains("max storage binding:"),
        "{text}"
    );
    let out = run(tool().args(["info", "--adapter", "no adapter has this name"]));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn tiny_bench_writes_json_and_svg() {
    let dir = scratch("bench");
    // PyTorch's figures as torch_norms.py prints them, for one of the shapes.
    std::fs::write(
        dir.join("torch.csv"),
        "# fake\ndtype,rows,D,copy_GBps,ln_fwd_us,ln_fwd_GBps,rms_fwd_us,rms_fwd_GBps,\
         ln_bwd_us,ln_bwd_GBps,rms_bwd_us,rms_bwd_GBps\nbf16,50,300,1,1e6,1,2e6,1,3e6,1,4e6,1\n",
    )
    .unwrap();
    let out = run(tool().current_dir(&dir).args([
        "bench",
        "--dims",
        "64,300",
        "--rows",
        "50",
        "--iters",
        "2",
        "--warm-up-ms",
        "10",
        "--dtypes",
        "f32,bf16",
        "--backward",
        "--torch",
        "torch.csv",
        "--json",
        "b.json",
        "--svg",
        "b.svg",
    ]));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("copy µs") && text.contains("RMS/LN") && text.contains("RMSNorm bwd"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("b.json")).unwrap()).unwrap();
    assert_eq!(json["crate_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        json["adapter"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    assert!(json["date"].as_str().is_some_and(|d| d.len() == 10));
    assert_eq!(json["tuning"]["v_per_invocation"], 8);
    assert_eq!(json["tuning"]["v_per_invocation_strided"], 8);
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    let shapes = [("f32", 64), ("f32", 300), ("bf16", 64), ("bf16", 300)];
    for (r, (dtype, dim)) in results.iter().zip(shapes) {
        assert_eq!(r["dim"], dim);
        assert_eq!(r["dtype"], dtype);
        assert!(r["copy_gbps"].as_f64().unwrap() > 0.0);
        for k in [
            "layer_norm",
            "rms_norm",
            "layer_norm_backward",
            "rms_norm_backward",
        ] {
            assert_eq!(r[k]["check_passed"], true, "{k} {r}");
            assert!(r[k]["gbps"].as_f64().unwrap() > 0.0);
            assert!(r[k]["us_per_op"].as_f64().unwrap() > 0.0);
            // PyTorch's time only where the CSV had the shape.
            let torch = r[k]["torch_us"].as_f64();
            assert_eq!(torch.is_some(), dtype == "bf16" && dim == 300, "{k} {r}");
        }
    }
    assert_eq!(results[3]["rms_norm_backward"]["torch_us"], 4e6);
    let svg = std::fs::read_to_string(dir.join("b.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("RMSNorm"));
}
