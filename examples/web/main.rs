//! The engine of the browser page (`examples/web/index.html`): finds the browser's WebGPU
//! adapter, checks LayerNorm and RMSNorm against the f64 reference, and times a copy and both
//! norms over a grid of D and storage types, as `wgpu-norm bench` does natively. The page
//! draws what these functions return (JSON strings). Built for wasm32 by
//! `examples/web/serve.sh`; on native targets this example is empty.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::json;
use wasm_bindgen::prelude::*;
use wgpu_norm::timing::{Clock, Timer};
use wgpu_norm::{CopyOp, DType, Gpu, LayerNorm, RmsNorm, TensorRef, reference, wgpu};

thread_local! {
    /// One device for the page's lifetime.
    static GPU: RefCell<Option<Rc<Gpu>>> = const { RefCell::new(None) };
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&e.to_string())
}

async fn gpu() -> Result<Rc<Gpu>, JsValue> {
    if let Some(g) = GPU.with(|g| g.borrow().clone()) {
        return Ok(g);
    }
    let g = Rc::new(Gpu::new_async().await.map_err(js_err)?);
    GPU.with(|cell| *cell.borrow_mut() = Some(g.clone()));
    Ok(g)
}

/// The adapter and what matters about it here, as JSON.
#[wasm_bindgen]
pub async fn adapter() -> Result<String, JsValue> {
    let gpu = gpu().await?;
    let info = gpu.adapter.get_info();
    let limits = gpu.device.limits();
    let timer = Timer::new(&gpu.device, &gpu.queue);
    Ok(json!({
        "name": info.name,
        "description": gpu.describe(),
        "backend": format!("{:?}", info.backend),
        "device_type": format!("{:?}", info.device_type),
        "driver": info.driver,
        "fallback": info.device_type == wgpu::DeviceType::Cpu,
        "clock": clock_name(timer.op_clock()),
        "subgroups": gpu.norms.uses_subgroups(),
        "max_workgroup_size": limits.max_compute_invocations_per_workgroup,
        "max_storage_binding_mib": limits.max_storage_buffer_binding_size >> 20,
    })
    .to_string())
}

fn clock_name(c: Clock) -> &'static str {
    match c {
        Clock::GpuTimestamps => "GPU timestamps",
        Clock::WallClock => "submission to done (wall clock; no timestamp queries)",
    }
}

fn parse_dtype(s: &str) -> Result<DType, JsValue> {
    match s.trim() {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::Bf16),
        other => Err(js_err(format!("unknown dtype {other:?}"))),
    }
}

/// Seeded data around 3 with spread ~1 (LayerNorm's centring matters), rounded to `dtype`.
fn data(n: usize, seed: u64, center: f32, dtype: DType) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            center + ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect();
    dtype.decode(&dtype.encode(&v))
}

/// One shape's buffers and both ops on them.
struct Shape {
    dtype: DType,
    rows: usize,
    dim: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    xb: wgpu::Buffer,
    yb: wgpu::Buffer,
    wb: wgpu::Buffer,
    bb: wgpu::Buffer,
}

impl Shape {
    fn new(gpu: &Gpu, dtype: DType, rows: usize, dim: usize) -> Self {
        let seed = dim as u64 * 3 + dtype.size();
        let x = data(rows * dim, seed, 3.0, dtype);
        let w = data(dim, seed + 1, 1.0, dtype);
        let b = data(dim, seed + 2, 0.0, dtype);
        let words = self_words(rows * dim, dtype);
        Shape {
            xb: gpu.upload_as("page x", &x, dtype),
            yb: gpu.storage("page y", words),
            wb: gpu.upload_as("page weight", &w, dtype),
            bb: gpu.upload_as("page bias", &b, dtype),
            dtype,
            rows,
            dim,
            x,
            w,
            b,
        }
    }

    fn bytes(&self) -> u64 {
        (self.rows * self.dim) as u64 * self.dtype.size()
    }

    fn tensor<'a>(&self, buf: &'a wgpu::Buffer) -> TensorRef<'a> {
        TensorRef::new(buf, 0, self.bytes())
    }

    fn param<'a>(&self, buf: &'a wgpu::Buffer) -> TensorRef<'a> {
        TensorRef::new(buf, 0, self.dim as u64 * self.dtype.size())
    }

    fn layer_norm(&self) -> LayerNorm<'_> {
        LayerNorm::new(
            self.rows,
            self.dim,
            self.tensor(&self.xb),
            self.tensor(&self.yb),
        )
        .dtype(self.dtype)
        .weight(self.param(&self.wb))
        .bias(self.param(&self.bb))
    }

    fn rms_norm(&self) -> RmsNorm<'_> {
        RmsNorm::new(
            self.rows,
            self.dim,
            self.tensor(&self.xb),
            self.tensor(&self.yb),
        )
        .dtype(self.dtype)
        .weight(self.param(&self.wb))
    }

    /// A copy of the same bytes, whole words (a 16-bit tensor of odd length is padded).
    fn copy(&self) -> CopyOp<'_> {
        let words = self_words(self.rows * self.dim, self.dtype);
        let whole = |b| TensorRef::new(b, 0, words as u64 * 4);
        CopyOp::new(1, words, whole(&self.xb), whole(&self.yb))
    }

    /// Runs one norm and returns its largest error and whether every element is within the
    /// dtype's tolerance of the reference (outputs poisoned with NaN first).
    async fn check(&self, gpu: &Gpu, layer: bool) -> Result<(f64, bool), JsValue> {
        let words = self_words(self.rows * self.dim, self.dtype);
        gpu.queue
            .write_buffer(&self.yb, 0, bytemuck::cast_slice(&vec![f32::NAN; words]));
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let (ln, rms) = (self.layer_norm(), self.rms_norm());
        // Compile errors are only known later in a browser: await them before recording.
        if layer {
            gpu.norms.warm_async(&ln).await.map_err(js_err)?;
            gpu.norms.layer_norm(&mut encoder, &ln).map_err(js_err)?;
        } else {
            gpu.norms.warm_async(&rms).await.map_err(js_err)?;
            gpu.norms.rms_norm(&mut encoder, &rms).map_err(js_err)?;
        }
        gpu.queue.submit([encoder.finish()]);
        let read = gpu.read_async(&[(&self.yb, words)]).await.map_err(js_err)?;
        let bytes: &[u8] = bytemuck::cast_slice(&read[0]);
        let y = self.dtype.decode(&bytes[..self.bytes() as usize]);
        let r = if layer {
            reference::layer_norm(&self.x, self.dim, Some(&self.w), Some(&self.b), ln.eps)
        } else {
            reference::rms_norm(&self.x, self.dim, Some(&self.w), rms.eps)
        };
        let abs = y
            .iter()
            .zip(&r.y)
            .map(|(&g, &v)| (f64::from(g) - v).abs())
            .fold(0.0, f64::max);
        let (ratio, _) = reference::worst_error_in(self.dtype, &y, &r.y);
        Ok((abs, ratio <= 1.0))
    }
}

fn self_words(elements: usize, dtype: DType) -> usize {
    (elements as u64 * dtype.size()).div_ceil(4) as usize
}

async fn time(
    timer: &Timer,
    gpu: &Gpu,
    shape: &Shape,
    kernel: &str,
    iters: u32,
) -> Result<std::time::Duration, JsValue> {
    let norms = &gpu.norms;
    match kernel {
        "copy" => timer.time_op_async(norms, &shape.copy(), iters).await,
        "layer_norm" => timer.time_op_async(norms, &shape.layer_norm(), iters).await,
        _ => timer.time_op_async(norms, &shape.rms_norm(), iters).await,
    }
    .map_err(js_err)
}

fn say(progress: &js_sys::Function, msg: &str) {
    let _ = progress.call1(&JsValue::NULL, &JsValue::from_str(msg));
}

/// Checks, then times, a copy and both norms at every (dtype, D), `mib` MiB of x at f32 (the
/// same elements in 16 bits), each kernel warmed once and timed in 3 batches of `iters` runs
/// (the median). Returns the table as JSON; `progress` is called with a line per step.
#[wasm_bindgen]
pub async fn bench(
    dims: Vec<u32>,
    dtypes: String,
    mib: f64,
    iters: u32,
    progress: js_sys::Function,
) -> Result<String, JsValue> {
    let gpu = gpu().await?;
    let timer = Timer::new(&gpu.device, &gpu.queue);
    let dtypes = dtypes
        .split(',')
        .map(parse_dtype)
        .collect::<Result<Vec<_>, _>>()?;
    if dims.is_empty() || dims.contains(&0) || iters == 0 || !(mib > 0.0) {
        return Err(js_err(
            "dims must be at least 1, iters at least 1, mib above 0",
        ));
    }
    let total = dtypes.len() * dims.len();
    let mut results = Vec::new();
    let mut step = 0;
    for &dtype in &dtypes {
        for &dim in &dims {
            step += 1;
            let dim = dim as usize;
            let rows = ((mib * 1048576.0 / 4.0) as usize / dim).max(1);
            let head = format!("[{step}/{total}] {dtype} D={dim} rows={rows}");
            say(&progress, &format!("{head}: checking"));
            let shape = Shape::new(&gpu, dtype, rows, dim);
            let ln_check = shape.check(&gpu, true).await?;
            let rms_check = shape.check(&gpu, false).await?;
            let bytes = 2.0 * shape.bytes() as f64;
            let mut figures = Vec::new();
            for (name, ok) in [
                ("copy", true),
                ("layer_norm", ln_check.1),
                ("rms_norm", rms_check.1),
            ] {
                if !ok {
                    figures.push(None);
                    continue;
                }
                say(&progress, &format!("{head}: timing {name}"));
                // A warm-up batch first (pipelines, clocks), then three timed ones.
                time(&timer, &gpu, &shape, name, iters).await?;
                let mut secs = Vec::new();
                for _ in 0..3 {
                    let t = time(&timer, &gpu, &shape, name, iters).await?;
                    secs.push(t.as_secs_f64() / f64::from(iters));
                }
                secs.sort_by(f64::total_cmp);
                figures.push(Some(secs[1]));
            }
            let gbps = |s: Option<f64>| s.map(|s| bytes / s / 1e9);
            let copy = gbps(figures[0]);
            let fig = |i: usize, check: (f64, bool)| {
                let g = gbps(figures[i]);
                json!({
                    "gbps": g,
                    "us_per_op": figures[i].map(|s| s * 1e6),
                    "fraction_of_copy": g.zip(copy).map(|(g, c)| g / c),
                    "max_abs_error": check.0,
                    "check_passed": check.1,
                })
            };
            results.push(json!({
                "dtype": dtype.name(),
                "dim": dim,
                "rows": rows,
                "bytes_per_tensor": shape.bytes(),
                "copy_gbps": copy,
                "layer_norm": fig(1, ln_check),
                "rms_norm": fig(2, rms_check),
                "rms_over_layer_norm": gbps(figures[2]).zip(gbps(figures[1])).map(|(a, b)| a / b),
            }));
        }
    }
    say(&progress, "done");
    let info = gpu.adapter.get_info();
    Ok(json!({
        "tool": "wgpu-norm web page",
        "crate_version": env!("CARGO_PKG_VERSION"),
        "adapter": {
            "name": info.name,
            "backend": format!("{:?}", info.backend),
            "device_type": format!("{:?}", info.device_type),
            "driver": info.driver,
        },
        "clock": clock_name(timer.op_clock()),
        "subgroups": gpu.norms.uses_subgroups(),
        "iters_per_batch": iters,
        "batches": 3,
        "statistic": "median batch; us_per_op = batch time / iters",
        "units": "GB/s = (x read + y written) / time, decimal",
        "results": results,
    })
    .to_string())
}
