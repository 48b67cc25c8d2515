//! Every bad argument is a typed error, recorded nothing, and never reaches wgpu's
//! uncaptured-error handler.

mod common;

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use common::{UNCAPTURED, gpu, small_binding_gpu};
use wgpu_norm::{Error, LayerNorm, Operand, RmsNorm, TensorRef};

fn buf(len_f32: usize, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    gpu().device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("errors"),
        size: (len_f32 * 4) as u64,
        usage,
        mapped_at_creation: false,
    })
}

fn storage(len_f32: usize) -> wgpu::Buffer {
    buf(
        len_f32,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    )
}

fn t(b: &wgpu::Buffer, offset: u64, len_f32: usize) -> TensorRef<'_> {
    TensorRef::new(b, offset, (len_f32 * 4) as u64)
}

/// Records `f` into a fresh encoder, which must still submit cleanly afterwards.
fn record(f: impl FnOnce(&mut wgpu::CommandEncoder) -> wgpu_norm::Result<()>) -> Error {
    let gpu = gpu();
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let err = f(&mut encoder).expect_err("must be rejected");
    gpu.queue.submit([encoder.finish()]);
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    assert_eq!(
        UNCAPTURED.load(Ordering::SeqCst),
        0,
        "{err}: reached the handler"
    );
    assert!(!err.to_string().is_empty());
    err
}

/// A valid 3 x 4 input and output, for the ops below to spoil one argument of.
fn xy() -> &'static (wgpu::Buffer, wgpu::Buffer) {
    static XY: OnceLock<(wgpu::Buffer, wgpu::Buffer)> = OnceLock::new();
    XY.get_or_init(|| (storage(12), storage(12)))
}

fn ln<'a>(f: impl FnOnce(LayerNorm<'a>) -> LayerNorm<'a>) -> Error {
    let (x, y) = xy();
    let op = f(LayerNorm::new(3, 4, x, y));
    record(|e| gpu().norms.layer_norm(e, &op))
}

fn rms<'a>(f: impl FnOnce(RmsNorm<'a>) -> RmsNorm<'a>) -> Error {
    let (x, y) = xy();
    let op = f(RmsNorm::new(3, 4, x, y));
    record(|e| gpu().norms.rms_norm(e, &op))
}

#[test]
fn zero_dim() {
    assert_eq!(ln(|op| LayerNorm { dim: 0, ..op }), Error::ZeroDim);
    assert_eq!(rms(|op| RmsNorm { dim: 0, ..op }), Error::ZeroDim);
}

#[test]
fn bad_epsilon() {
    for eps in [-1e-5, f32::NAN, f32::INFINITY, -0.0 - 1.0] {
        assert!(matches!(ln(|op| op.eps(eps)), Error::BadEpsilon(_)));
        assert!(matches!(rms(|op| op.eps(eps)), Error::BadEpsilon(_)));
    }
}

#[test]
fn wrong_sizes() {
    let err = ln(|op| LayerNorm { rows: 4, ..op });
    assert!(
        matches!(
            err,
            Error::WrongSize {
                operand: Operand::Input,
                ..
            }
        ),
        "{err}"
    );
    let short = storage(3);
    let long = storage(5);
    let err = ln(|op| op.weight(&short));
    assert!(
        matches!(
            err,
            Error::WrongSize {
                operand: Operand::Weight,
                expected: 16,
                actual: 12,
                ..
            }
        ),
        "{err}"
    );
    let err = ln(|op| op.bias(&long));
    assert!(
        matches!(
            err,
            Error::WrongSize {
                operand: Operand::Bias,
                ..
            }
        ),
        "{err}"
    );
    let err = ln(|op| op.mean(&long));
    assert!(
        matches!(
            err,
            Error::WrongSize {
                operand: Operand::Mean,
                ..
            }
        ),
        "{err}"
    );
    let err = rms(|op| op.rrms(&short).weight(&long));
    assert!(
        matches!(
            err,
            Error::WrongSize {
                operand: Operand::Weight,
                ..
            }
        ),
        "{err}"
    );
    let y_short = storage(11);
    let err = ln(|op| LayerNorm {
        output: TensorRef::whole(&y_short),
        ..op
    });
    assert!(
        matches!(
            err,
            Error::WrongSize {
                operand: Operand::Output,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn out_of_bounds() {
    let w = storage(4);
    let err = ln(|op| op.weight(t(&w, 8, 4)));
    assert!(
        matches!(
            err,
            Error::OutOfBounds {
                operand: Operand::Weight,
                offset: 8,
                end: 24,
                buffer_size: 16
            }
        ),
        "{err}"
    );
    let err = rms(|op| op.rrms(TensorRef::new(&w, u64::MAX - 7, 12)));
    assert!(
        matches!(
            err,
            Error::OutOfBounds {
                operand: Operand::Rrms,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn misaligned_offset() {
    let x = storage(13);
    let err = ln(|op| LayerNorm {
        input: t(&x, 2, 12),
        ..op
    });
    assert!(
        matches!(
            err,
            Error::MisalignedOffset {
                operand: Operand::Input,
                offset: 2,
                element: 4
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_storage_usage() {
    let x = buf(
        12,
        wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::VERTEX,
    );
    let err = rms(|op| RmsNorm {
        input: TensorRef::whole(&x),
        ..op
    });
    assert!(
        matches!(
            err,
            Error::MissingUsage {
                operand: Operand::Input,
                ..
            }
        ),
        "{err}"
    );
    let u = buf(4, wgpu::BufferUsages::UNIFORM);
    let err = ln(|op| op.weight(&u));
    assert!(
        matches!(
            err,
            Error::MissingUsage {
                operand: Operand::Weight,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn overlapping_outputs() {
    let big = storage(40);
    // y overlaps x by one element.
    let err = ln(|op| LayerNorm {
        input: t(&big, 0, 12),
        output: t(&big, 44, 12),
        ..op
    });
    assert_eq!(
        err,
        Error::Overlap {
            written: Operand::Output,
            other: Operand::Input
        }
    );
    // mean inside y.
    let err = ln(|op| {
        LayerNorm {
            output: t(&big, 0, 12),
            ..op
        }
        .mean(t(&big, 16, 3))
    });
    assert_eq!(
        err,
        Error::Overlap {
            written: Operand::Output,
            other: Operand::Mean
        }
    );
    // weight read from where rrms is written.
    let err = rms(|op| op.weight(t(&big, 100, 4)).rrms(t(&big, 104, 3)));
    assert_eq!(
        err,
        Error::Overlap {
            written: Operand::Rrms,
            other: Operand::Weight
        }
    );
}

#[test]
fn shape_too_large() {
    let err = ln(|op| LayerNorm {
        rows: usize::MAX / 2,
        ..op
    });
    assert!(matches!(err, Error::ShapeTooLarge { .. }), "{err}");
    let err = ln(|op| LayerNorm { dim: 1 << 33, ..op });
    assert!(matches!(err, Error::ShapeTooLarge { .. }), "{err}");
}

#[test]
fn row_larger_than_a_binding() {
    let gpu = small_binding_gpu(1 << 20);
    let dim = 300_000;
    let x = gpu.storage("x", dim);
    let y = gpu.storage("y", dim);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let err = gpu
        .norms
        .rms_norm(&mut encoder, &RmsNorm::new(1, dim, &x, &y))
        .unwrap_err();
    assert!(
        matches!(err, Error::RowTooLarge { dim: 300_000, .. }),
        "{err}"
    );
}

#[test]
fn zero_rows_is_a_no_op() {
    let gpu = gpu();
    let y = gpu.upload("y", &[7.0; 4]);
    let x = storage(4);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let empty = |b| TensorRef::new(b, 0, 0);
    gpu.norms
        .layer_norm(
            &mut encoder,
            &LayerNorm::new(0, 4, empty(&x), empty(&y)).weight(t(&x, 0, 4)),
        )
        .unwrap();
    gpu.norms
        .rms_norm(
            &mut encoder,
            &RmsNorm::new(0, 4, empty(&x), empty(&y)).rrms(empty(&y)),
        )
        .unwrap();
    gpu.queue.submit([encoder.finish()]);
    let out = pollster::block_on(gpu.read_async(&[(&y, 4)])).unwrap();
    assert_eq!(out[0], [7.0; 4]);
    // Zero rows is still validated.
    let err = ln(|op| LayerNorm { rows: 0, ..op });
    assert!(
        matches!(
            err,
            Error::WrongSize {
                operand: Operand::Input,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn slices_of_the_wrong_length() {
    let gpu = gpu();
    let opts = wgpu_norm::SliceOptions::default();
    let err = gpu.layer_norm(&[1.0; 10], 4, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SliceLength {
                len: 10,
                dim: 4,
                ..
            }
        ),
        "{err}"
    );
    let err = gpu.rms_norm(&[1.0; 8], 0, &opts).unwrap_err();
    assert_eq!(err, Error::ZeroDim);
    let w = [1.0; 3];
    let err = gpu
        .layer_norm(
            &[1.0; 8],
            4,
            &wgpu_norm::SliceOptions {
                weight: Some(&w),
                ..opts
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::SliceLength { len: 3, .. }), "{err}");
    let err = gpu
        .rms_norm(
            &[1.0; 8],
            4,
            &wgpu_norm::SliceOptions {
                bias: Some(&[0.0; 4]),
                ..opts
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::SliceLength { .. }), "{err}");
    let err = gpu
        .layer_norm(
            &[1.0; 8],
            4,
            &wgpu_norm::SliceOptions {
                eps: Some(-1.0),
                ..opts
            },
        )
        .unwrap_err();
    assert_eq!(err, Error::BadEpsilon(-1.0));
}

#[test]
fn no_adapter_says_how_to_get_one() {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::empty(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let err =
        pollster::block_on(wgpu_norm::adapter::pick_adapter_named(&instance, None)).unwrap_err();
    assert!(err.to_string().contains("mesa-vulkan-drivers"), "{err}");
    // Kept alive to the end of the run, as the devices are: this instance reaches every
    // backend (EGL and lavapipe too), and the one SIGSEGV this binary gave in about sixty runs
    // (2026-11-29, at exit, every test passed) may have been its teardown beside the others'.
    let all_backends = Box::leak(Box::new(wgpu_norm::adapter::instance()));
    let err = pollster::block_on(wgpu_norm::adapter::pick_adapter_named(
        all_backends,
        Some("no adapter has this name"),
    ))
    .unwrap_err();
    assert!(
        matches!(err, Error::NoAdapter(ref m) if m.contains("found:")),
        "{err}"
    );
}

#[test]
fn device_too_small_for_the_kernels() {
    let adapter = pollster::block_on(wgpu_norm::pick_adapter()).unwrap();
    let limits = wgpu::Limits {
        max_compute_invocations_per_workgroup: 32,
        max_compute_workgroup_size_x: 32,
        ..adapter.limits()
    };
    let (device, _queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap();
    let err = wgpu_norm::Norms::new(&device).err();
    assert!(matches!(err, Some(Error::UnsupportedDevice(_))), "{err:?}");
    // Kept alive to the end of the run: no device is torn down while others are in use.
    Box::leak(Box::new(device));
}

#[test]
fn backward_arguments() {
    use wgpu_norm::{LayerNormBackward, RmsNormBackward};
    let (x, dy) = xy();
    let dx = storage(12);
    let stats = storage(3);
    let short = storage(3);
    let err = lnb(&dx, |op| LayerNormBackward {
        mean: Some(TensorRef::whole(&stats)),
        ..op
    });
    assert_eq!(
        err,
        Error::MissingOperand {
            needs: Operand::Rstd,
            given: Operand::Mean
        }
    );
    let err = lnb(&dx, |op| op.grad_weight(&short));
    assert!(
        matches!(
            err,
            Error::WrongSize {
                operand: Operand::GradWeight,
                ..
            }
        ),
        "{err}"
    );
    let err = lnb(&dx, |op| op.grad_bias(&short));
    assert!(
        matches!(
            err,
            Error::WrongSize {
                operand: Operand::GradBias,
                ..
            }
        ),
        "{err}"
    );
    let err = lnb(&dx, |op| LayerNormBackward { dim: 0, ..op });
    assert_eq!(err, Error::ZeroDim);
    let err = lnb(&dx, |op| op.eps(f32::NAN));
    assert!(matches!(err, Error::BadEpsilon(_)));
    let err = lnb(&dx, |op| LayerNormBackward {
        grad_output: TensorRef::whole(&short),
        ..op
    });
    assert!(
        matches!(
            err,
            Error::WrongSize {
                operand: Operand::GradOutput,
                ..
            }
        ),
        "{err}"
    );
    // dx overlapping x by part: rejected; dx exactly over dy: allowed (in place).
    let big = storage(40);
    let op = LayerNormBackward::new(3, 4, t(&big, 0, 12), dy, t(&big, 16, 12)).eps(1e-5);
    let err = record(|e| gpu().norms.layer_norm_backward(e, &op));
    assert_eq!(
        err,
        Error::Overlap {
            written: Operand::GradInput,
            other: Operand::Input
        }
    );
    // dweight written over the weight it reads.
    let w = storage(4);
    let op = RmsNormBackward::new(3, 4, x, dy, &dx)
        .eps(1e-6)
        .weight(&w)
        .grad_weight(&w);
    let err = record(|e| gpu().norms.rms_norm_backward(e, &op));
    assert_eq!(
        err,
        Error::Overlap {
            written: Operand::GradWeight,
            other: Operand::Weight
        }
    );
    // dweight written over the saved rrms it reads.
    let both = storage(8);
    let op = RmsNormBackward::new(3, 4, x, dy, &dx)
        .saved(t(&both, 0, 3))
        .grad_weight(t(&both, 8, 4));
    let err = record(|e| gpu().norms.rms_norm_backward(e, &op));
    assert_eq!(
        err,
        Error::Overlap {
            written: Operand::GradWeight,
            other: Operand::Rrms
        }
    );
}

#[test]
fn a_backward_that_recomputes_needs_the_forward_eps() {
    use wgpu_norm::{LayerNormBackward, RmsNormBackward};
    let (x, dy) = xy();
    let dx = storage(12);
    let stats = storage(6);
    let err = record(|e| {
        gpu()
            .norms
            .rms_norm_backward(e, &RmsNormBackward::new(3, 4, x, dy, &dx))
    });
    assert_eq!(
        err,
        Error::EpsilonNeeded {
            op: "RmsNormBackward"
        }
    );
    assert!(err.to_string().contains(".eps("), "{err}");
    let err = record(|e| {
        gpu()
            .norms
            .layer_norm_backward(e, &LayerNormBackward::new(3, 4, x, dy, &dx))
    });
    assert_eq!(
        err,
        Error::EpsilonNeeded {
            op: "LayerNormBackward"
        }
    );
    // With saved statistics eps is not needed; built from the forward op it is carried over.
    let mut encoder = gpu().device.create_command_encoder(&Default::default());
    let saved = RmsNormBackward::new(3, 4, x, dy, &dx).saved(t(&stats, 0, 3));
    gpu().norms.rms_norm_backward(&mut encoder, &saved).unwrap();
    let y = storage(12);
    let forward = wgpu_norm::RmsNorm::new(3, 4, x, &y).eps(1e-3);
    let backward = forward.backward(dy, &dx).unwrap();
    assert_eq!(backward.eps, Some(1e-3));
    gpu()
        .norms
        .rms_norm_backward(&mut encoder, &backward)
        .unwrap();
    let forward = wgpu_norm::LayerNorm::new(3, 4, x, &y)
        .eps(1e-3)
        .mean(t(&stats, 0, 3))
        .rstd(t(&stats, 12, 3));
    let backward = forward.backward(dy, &dx).unwrap();
    assert_eq!((backward.eps, backward.mean.is_some()), (Some(1e-3), true));
    gpu()
        .norms
        .layer_norm_backward(&mut encoder, &backward)
        .unwrap();
    gpu().queue.submit([encoder.finish()]);
    // A fused residual whose sum is not written leaves the backward no x.
    let r = storage(12);
    let err = wgpu_norm::RmsNorm::new(3, 4, x, &y)
        .residual(&r)
        .backward(dy, &dx)
        .unwrap_err();
    assert_eq!(
        err,
        Error::MissingOperand {
            needs: Operand::ResidualOut,
            given: Operand::Residual
        }
    );
}

fn lnb<'a>(
    dx: &'a wgpu::Buffer,
    f: impl FnOnce(wgpu_norm::LayerNormBackward<'a>) -> wgpu_norm::LayerNormBackward<'a>,
) -> Error {
    let (x, dy) = xy();
    let op = f(wgpu_norm::LayerNormBackward::new(3, 4, x, dy, dx).eps(1e-5));
    record(|e| gpu().norms.layer_norm_backward(e, &op))
}

#[test]
fn option_arguments() {
    use wgpu_norm::DType;
    let err = rms(|op| op.partial(0.0));
    assert_eq!(err, Error::BadFraction(0.0));
    let err = rms(|op| op.partial(1.5));
    assert_eq!(err, Error::BadFraction(1.5));
    let err = rms(|op| op.partial(f32::NAN));
    assert!(matches!(err, Error::BadFraction(_)));
    let s = storage(12);
    let err = ln(|op| op.residual_out(&s));
    assert_eq!(
        err,
        Error::MissingOperand {
            needs: Operand::Residual,
            given: Operand::ResidualOut
        }
    );
    let err = rms(|op| op.residual_out(&s));
    assert_eq!(
        err,
        Error::MissingOperand {
            needs: Operand::Residual,
            given: Operand::ResidualOut
        }
    );
    // 16-bit tensors: sizes count 2-byte elements, offsets need 2-byte alignment.
    let err = ln(|op| op.dtype(DType::F16));
    assert!(
        matches!(
            err,
            Error::WrongSize {
                operand: Operand::Input,
                expected: 24,
                actual: 48,
                ..
            }
        ),
        "{err}"
    );
    let h = storage(13);
    let err = rms(|op| {
        RmsNorm {
            input: t(&h, 1, 6),
            output: t(&h, 28, 6),
            ..op
        }
        .dtype(DType::Bf16)
    });
    assert!(
        matches!(
            err,
            Error::MisalignedOffset {
                operand: Operand::Input,
                offset: 1,
                element: 2
            }
        ),
        "{err}"
    );
    // The f32 weight of the mixed mode is 16 bytes; as bf16 it would be 8.
    let (xh, yh) = (storage(6), storage(6));
    let w = storage(4);
    let op = RmsNorm::new(3, 4, &xh, &yh).dtype(DType::Bf16).weight(&w);
    let err = record(|e| gpu().norms.rms_norm(e, &op));
    assert!(
        matches!(
            err,
            Error::WrongSize {
                operand: Operand::Weight,
                expected: 8,
                ..
            }
        ),
        "{err}"
    );
    let op = op.param_dtype(DType::F32);
    let mut encoder = gpu().device.create_command_encoder(&Default::default());
    gpu().norms.rms_norm(&mut encoder, &op).unwrap();
    gpu().queue.submit([encoder.finish()]);
    // A 16-bit tensor ending mid-word needs the rest of the word in its buffer.
    let odd = gpu().device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 6,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let op = RmsNorm::new(3, 1, &odd, TensorRef::new(&yh, 0, 6)).dtype(DType::F16);
    let err = record(|e| gpu().norms.rms_norm(e, &op));
    assert!(
        matches!(
            err,
            Error::OutOfBounds {
                operand: Operand::Input,
                end: 8,
                ..
            }
        ),
        "{err}"
    );
}
