//! Faults are errors, never panics: a lost device, a destroyed buffer, a buffer of another
//! device, zero-sized buffers; and nothing reaches wgpu's uncaptured-error handler.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use wgpu_norm::{Error, Gpu, LayerNorm, Norms, Operand, RmsNorm, RmsNormBackward, TensorRef};

/// A device of its own, from `instance`, counting what reaches its uncaptured-error handler.
/// Kept alive to the end of the run: no device is torn down while others are in use.
fn open(instance: &wgpu::Instance) -> (&'static Gpu, Arc<AtomicUsize>) {
    let gpu = pollster::block_on(async {
        let adapter = wgpu_norm::adapter::pick_adapter_named(instance, None).await?;
        Gpu::from_adapter(adapter, None, Default::default()).await
    })
    .unwrap_or_else(|e| panic!("\n\nTHE GPU TESTS NEED A WGPU ADAPTER AND FOUND NONE.\n{e}\n\n"));
    let uncaptured = Arc::new(AtomicUsize::new(0));
    let count = uncaptured.clone();
    gpu.device.on_uncaptured_error(Arc::new(move |e| {
        eprintln!("uncaptured wgpu error: {e}");
        count.fetch_add(1, Ordering::SeqCst);
    }));
    (Box::leak(Box::new(gpu)), uncaptured)
}

fn encoder(gpu: &Gpu) -> wgpu::CommandEncoder {
    gpu.device.create_command_encoder(&Default::default())
}

#[test]
fn a_lost_device_makes_every_call_an_error() {
    let (gpu, uncaptured) = open(&wgpu_norm::adapter::instance());
    let x = gpu.upload("x", &[1.0, 2.0, 3.0, 4.0]);
    let y = gpu.storage("y", 4);
    let op = RmsNorm::new(1, 4, &x, &y).eps(1e-6);
    gpu.norms.record(&mut encoder(gpu), &op).unwrap();
    gpu.device.destroy();
    // Before wgpu has reported the loss, calls still must not panic, even where they create
    // objects (new uniform parameters here).
    let fresh = RmsNorm::new(1, 4, &x, &y).eps(1e-3);
    let _ = gpu.norms.record(&mut encoder(gpu), &fresh);
    let _ = gpu.device.poll(wgpu::PollType::Poll);
    let lost = |r: wgpu_norm::Result<()>| matches!(r, Err(Error::DeviceLost(_)));
    assert!(
        gpu.norms
            .device_lost()
            .is_some_and(|why| why.contains("Destroyed"))
    );
    assert!(lost(gpu.norms.record(&mut encoder(gpu), &op)));
    assert!(lost(gpu.norms.prepare(&op).map(|_| ())));
    assert!(lost(gpu.norms.warm(&op)));
    let err = gpu.rms_norm(&[1.0; 8], 4, &Default::default()).unwrap_err();
    assert!(matches!(err, Error::DeviceLost(_)), "{err}");
    assert!(err.to_string().contains("new device"), "{err}");
    assert_eq!(uncaptured.load(Ordering::SeqCst), 0);
}

#[test]
fn a_runtime_with_its_own_lost_callback_tells_norms() {
    let (gpu, _) = open(&wgpu_norm::adapter::instance());
    let norms = Norms::with_options(
        &gpu.device,
        wgpu_norm::NormsOptions {
            device_lost_callback: false,
            ..Default::default()
        },
    )
    .unwrap();
    let x = gpu.upload("x", &[1.0; 4]);
    let op = RmsNorm::new(1, 4, &x, &x);
    norms.record(&mut encoder(gpu), &op).unwrap();
    let handler = norms.device_lost_handler();
    gpu.device
        .set_device_lost_callback(move |reason, message| handler(reason, &message));
    gpu.device.destroy();
    let _ = gpu.device.poll(wgpu::PollType::Poll);
    assert!(matches!(
        norms.record(&mut encoder(gpu), &op),
        Err(Error::DeviceLost(_))
    ));
}

#[test]
fn destroyed_buffers_are_named() {
    let (gpu, uncaptured) = open(&wgpu_norm::adapter::instance());
    let x = gpu.upload("x", &[1.0; 8]);
    let y = gpu.storage("y", 8);
    let w = gpu.upload("w", &[1.0; 4]);
    let op = LayerNorm::new(2, 4, &x, &y).weight(&w);
    let prepared = gpu.norms.prepare(&op).unwrap();
    w.destroy();
    let err = gpu.norms.record(&mut encoder(gpu), &op).unwrap_err();
    assert_eq!(
        err,
        Error::DestroyedBuffer {
            operand: Operand::Weight
        }
    );
    assert!(matches!(
        gpu.norms.prepare(&op),
        Err(Error::DestroyedBuffer {
            operand: Operand::Weight
        })
    ));
    // A backward's dweight, bound by its second kernel.
    let dw = gpu.storage("dw", 4);
    dw.destroy();
    let bwd = RmsNormBackward::new(2, 4, &x, &x, &y)
        .eps(1e-6)
        .grad_weight(&dw);
    assert_eq!(
        gpu.norms.record(&mut encoder(gpu), &bwd).unwrap_err(),
        Error::DestroyedBuffer {
            operand: Operand::GradWeight
        }
    );
    // What was prepared before holds its own references: recording it is wgpu's business at
    // submission, and the crate does not check it.
    drop(prepared);
    assert_eq!(uncaptured.load(Ordering::SeqCst), 0);
}

#[test]
fn buffers_of_another_device_are_named() {
    let instance = wgpu_norm::adapter::instance();
    let (gpu, uncaptured) = open(&instance);
    let (other, _) = open(&instance);
    let x = gpu.upload("x", &[1.0; 8]);
    let foreign = other.storage("foreign y", 8);
    let err = gpu
        .norms
        .record(&mut encoder(gpu), &RmsNorm::new(2, 4, &x, &foreign))
        .unwrap_err();
    assert_eq!(
        err,
        Error::OtherDevice {
            operand: Operand::Output
        }
    );
    assert_eq!(uncaptured.load(Ordering::SeqCst), 0);
}

#[test]
fn zero_sized_buffers() {
    let (gpu, uncaptured) = open(&wgpu_norm::adapter::instance());
    let empty = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("empty"),
        size: 0,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let y = gpu.storage("y", 8);
    // Zero rows: nothing to read or write, nothing recorded.
    let op = RmsNorm::new(0, 4, &empty, TensorRef::new(&y, 0, 0));
    gpu.norms.record(&mut encoder(gpu), &op).unwrap();
    // Rows to read from nothing.
    let op = RmsNorm::new(2, 4, TensorRef::new(&empty, 0, 32), &y);
    assert!(matches!(
        gpu.norms.record(&mut encoder(gpu), &op),
        Err(Error::OutOfBounds {
            operand: Operand::Input,
            ..
        })
    ));
    let op = RmsNorm::new(2, 4, &empty, &y);
    assert!(matches!(
        gpu.norms.record(&mut encoder(gpu), &op),
        Err(Error::WrongSize {
            operand: Operand::Input,
            ..
        })
    ));
    assert_eq!(uncaptured.load(Ordering::SeqCst), 0);
}
